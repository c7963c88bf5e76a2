// Compiles chain/contracts/*.sol with solc-js (offline, the compiler is the npm package) and prints one JSON
// object: {compiler, settings, contracts: {Name: {abi, bytecode}}}. chain/compile.py writes the artefacts.
"use strict";
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const SETTINGS = {
  // ganache 7.9's newest hardfork; a newer target would emit opcodes it cannot run
  evmVersion: "shanghai",
  optimizer: { enabled: true, runs: 200 },
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
};

const dir = path.join(__dirname, "contracts");
const sources = {};
for (const file of fs.readdirSync(dir).filter((f) => f.endsWith(".sol")).sort()) {
  sources[file] = { content: fs.readFileSync(path.join(dir, file), "utf8") };
}
const output = JSON.parse(solc.compile(JSON.stringify({ language: "Solidity", sources, settings: SETTINGS })));
const errors = (output.errors || []).filter((e) => e.severity === "error");
if (errors.length) {
  for (const e of errors) process.stderr.write(e.formattedMessage + "\n");
  process.exit(1);
}
const contracts = {};
for (const file of Object.keys(output.contracts)) {
  for (const [name, c] of Object.entries(output.contracts[file])) {
    if (c.evm.bytecode.object) contracts[name] = { abi: c.abi, bytecode: "0x" + c.evm.bytecode.object };
  }
}
process.stdout.write(JSON.stringify({ compiler: solc.version(), settings: SETTINGS, contracts }));
