// The portal's only script: connect a wallet (EIP-1193 window.ethereum) with Sign-In with Ethereum, and sign
// the node registration statements nodes have signed. Everything else is plain HTML forms. No framework, no
// third-party code.
"use strict";

function hexOf(text) {
  return "0x" + Array.from(new TextEncoder().encode(text), (b) => b.toString(16).padStart(2, "0")).join("");
}

function say(text) {
  const status = document.getElementById("wallet-status");
  if (status) status.textContent = text;
}

async function postJson(url, body) {
  const headers = { "content-type": "application/json" };
  const csrf = document.body.dataset.csrf;
  if (csrf) headers["x-csrf-token"] = csrf;
  const response = await fetch(url, { method: "POST", headers, body: JSON.stringify(body), credentials: "same-origin" });
  const data = await response.json();
  if (!response.ok) throw new Error(data.error ? data.error.message : response.statusText);
  return data;
}

async function account() {
  const accounts = await window.ethereum.request({ method: "eth_requestAccounts" });
  if (!accounts || !accounts.length) throw new Error("the wallet shared no account");
  return accounts[0];
}

async function personalSign(message, address) {
  return window.ethereum.request({ method: "personal_sign", params: [hexOf(message), address] });
}

async function connect() {
  try {
    say("Asking your wallet…");
    const address = await account();
    const { message } = await postJson("/api/siwe/message", { address });
    const signature = await personalSign(message, address);
    await postJson("/api/siwe/verify", { message, signature });
    window.location.assign("/me");
  } catch (error) {
    say("Sign-in failed: " + error.message);
  }
}

// The statement comes from the node's registration link, already signed by the node's own key; the wallet it
// names signs the same text, and the form posts both signatures.
async function signRegistration(button) {
  try {
    const wallet = button.dataset.wallet;
    const statement = document.getElementById("statement").value;
    const address = await account();
    if (address.toLowerCase() !== wallet.toLowerCase()) {
      throw new Error("the statement registers the node to " + wallet + "; switch your wallet to that account");
    }
    document.getElementById("signature").value = await personalSign(statement, address);
    document.getElementById("register-form").submit();
  } catch (error) {
    say("Registration failed: " + error.message);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const connectButton = document.getElementById("connect");
  const noWallet = document.getElementById("no-wallet");
  if (!window.ethereum) {
    if (connectButton) connectButton.disabled = true;
    if (noWallet) noWallet.hidden = false;
    say("No wallet extension found: browse read-only by pasting an address.");
  } else if (connectButton) {
    connectButton.addEventListener("click", connect);
  }
  const registerButton = document.getElementById("sign-register");
  if (registerButton) registerButton.addEventListener("click", () => signRegistration(registerButton));
});
