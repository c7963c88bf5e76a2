"""Renamed settings: an old name still set stops a process and names the new one, and every new name is read."""

import pytest

from cli.settings_reference import settings_by_process
from protocol.settings import CommonSettings, SettingsError
from protocol.settings_renames import RENAMED, renamed_in_use


def variables_read() -> set[str]:
    return {name.upper() for _, cls in settings_by_process() for name in cls.model_fields}


def test_an_old_name_still_set_stops_start_up_naming_the_new_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAR_MESH_PAYOUT_CONFIRMATIONS", "3")
    with pytest.raises(SettingsError, match="FAR_MESH_PAYOUT_CONFIRMATIONS: renamed PAYOUT_CONFIRMATIONS"):
        CommonSettings.from_env()


def test_an_old_name_is_recognised_in_any_case() -> None:
    assert renamed_in_use({"far_mesh_worker_max_jobs": "4"}) == ["FAR_MESH_WORKER_MAX_JOBS: renamed WORKER_MAX_JOBS"]


def test_every_new_name_is_a_variable_a_process_reads_and_no_old_one_is() -> None:
    read = variables_read()
    assert set(RENAMED.values()) <= read
    assert not set(RENAMED) & read
