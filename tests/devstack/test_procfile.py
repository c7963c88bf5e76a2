"""The Procfile is the one list of process commands; `far-mesh dev` and the deploy manifests read it."""

from pathlib import Path

import pytest

from cli.main import build_parser
from devstack.procfile import ProcfileError, commands_for, read_procfile

REPO_PROCFILE = Path(__file__).resolve().parents[2] / "Procfile"


def test_every_procfile_line_names_a_real_far_mesh_subcommand() -> None:
    subcommands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, argv in read_procfile(REPO_PROCFILE).items():
        assert argv[0] == "far-mesh", name
        assert argv[1] in subcommands, f"Procfile {name}: far-mesh has no {argv[1]!r} subcommand"


def test_accounting_migrates_before_consuming_and_no_line_runs_once(tmp_path: Path) -> None:
    # honcho stops every process when one ends: a run-once `release: far-mesh migrate` line stopped them all.
    processes = read_procfile(REPO_PROCFILE)
    assert "release" not in processes
    assert processes["accounting"] == ["far-mesh", "accounting", "--migrate"]
    assert not [argv for argv in processes.values() if argv[1] == "migrate"]


def test_a_malformed_line_is_reported_with_its_number(tmp_path: Path) -> None:
    procfile = tmp_path / "Procfile"
    procfile.write_text("web: far-mesh gateway\n\n# comment\nthis is not a process line\n")
    with pytest.raises(ProcfileError, match=r"Procfile:4: expected 'name: command'"):
        read_procfile(procfile)


def test_asking_for_a_missing_process_type_names_it(tmp_path: Path) -> None:
    procfile = tmp_path / "Procfile"
    procfile.write_text("web: far-mesh gateway\n")
    assert commands_for(procfile, ["web"]) == {"web": ["far-mesh", "gateway"]}
    with pytest.raises(ProcfileError, match="no worker line"):
        commands_for(procfile, ["web", "worker"])
