"""Settings: flags, then `MAAS_*` variables, then defaults, read when built and never at import."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.cli import _parser, build_settings, main
from service.settings import Settings, cpu_quota, usable_cores
from tests.conftest import REPO


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MAAS_* variable from the calling shell leaks into these tests."""
    for name in Settings.model_fields:
        monkeypatch.delenv(f"MAAS_{name.upper()}", raising=False)


def test_defaults_match_the_settings_docs() -> None:
    settings = Settings()
    assert (settings.host, settings.port, settings.devices) == ("127.0.0.1", 8000, "auto")
    assert settings.models_dir == Path("models") and settings.data_dir == Path("var")
    assert settings.database_url is None and settings.admin_key is None


def test_environment_is_read_when_built_not_at_import(monkeypatch: pytest.MonkeyPatch) -> None:
    before = Settings()
    monkeypatch.setenv("MAAS_PORT", "9100")
    monkeypatch.setenv("MAAS_MODELS_DIR", "/srv/models")
    monkeypatch.setenv("MAAS_DEVICES", "cuda:0,cuda:1")
    monkeypatch.setenv("MAAS_DATABASE_URL", "postgresql+psycopg://db/maas")
    monkeypatch.setenv("MAAS_ADMIN_KEY", "mk_from_env")
    after = Settings()
    assert before.port == 8000 and after.port == 9100
    assert after.models_dir == Path("/srv/models") and after.devices == "cuda:0,cuda:1"
    assert after.resolved_database_url == "postgresql+psycopg://db/maas"
    assert after.admin_key is not None and after.admin_key.get_secret_value() == "mk_from_env"
    assert "mk_from_env" not in repr(after)  # the key stays out of logs and tracebacks


def test_keyword_arguments_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAAS_PORT", "9100")
    monkeypatch.setenv("MAAS_HOST", "0.0.0.0")
    settings = Settings(port=9)
    assert settings.port == 9 and settings.host == "0.0.0.0"


def test_bad_environment_value_is_a_validation_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAAS_PORT", "eighty")
    with pytest.raises(ValidationError, match="port"):
        Settings()


def test_database_defaults_to_sqlite_under_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings()  # data_dir "var", relative to where the gateway starts
    assert settings.resolved_database_url == f"sqlite:///{tmp_path.resolve() / 'var' / 'maas.db'}"
    elsewhere = Settings(data_dir=tmp_path / "state")
    assert elsewhere.resolved_database_url.endswith(f"{tmp_path.resolve()}/state/maas.db")


def test_serve_flags_become_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAAS_PORT", "9100")
    monkeypatch.setenv("MAAS_DEVICES", "cpu")
    args = _parser().parse_args(["serve", "--port", "9", "--models-dir", "x"])
    settings = build_settings(args)
    assert settings.port == 9  # the flag beats MAAS_PORT
    assert settings.models_dir == Path("x")
    assert settings.devices == "cpu"  # no flag: the variable
    assert settings.host == "127.0.0.1"  # neither: the default


def test_serve_rejects_a_bad_setting_without_starting() -> None:
    with pytest.raises(SystemExit) as caught:
        main(["serve", "--port", "70000"])
    assert "maas: invalid setting" in str(caught.value) and "port" in str(caught.value)


def test_rate_limit_settings_and_the_redis_url_stays_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings()
    assert defaults.redis_url is None and defaults.redis_fail_open is True
    assert defaults.default_rate_limit_rps is None and defaults.rate_limit_burst_factor == 2
    monkeypatch.setenv("MAAS_REDIS_URL", "redis://:hunter2@cache:6379/0")
    monkeypatch.setenv("MAAS_REDIS_FAIL_OPEN", "false")
    monkeypatch.setenv("MAAS_DEFAULT_RATE_LIMIT_RPS", "7.5")
    settings = Settings()
    assert settings.redis_url is not None and "hunter2" not in repr(settings)
    assert settings.redis_fail_open is False and settings.default_rate_limit_rps == 7.5
    with pytest.raises(ValidationError, match="rate_limit_burst_factor"):
        Settings(rate_limit_burst_factor=0.5)


def test_every_setting_is_in_the_settings_table_of_the_docs() -> None:
    table = (REPO / "docs" / "settings.md").read_text(encoding="utf-8")
    missing = [name for name in Settings.model_fields if f"| `MAAS_{name.upper()}` |" not in table]
    assert not missing, f"settings missing from docs/settings.md: {missing}"


def test_workers_default_to_auto_and_take_a_number_or_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().workers == "auto"
    monkeypatch.setenv("MAAS_WORKERS", "3")
    assert Settings().workers == 3 and Settings().resolved_workers == 3
    monkeypatch.setenv("MAAS_WORKERS", "auto")
    assert 1 <= Settings().resolved_workers <= len(os.sched_getaffinity(0))
    for bad in ("0", "257", "all", "1.5"):
        monkeypatch.setenv("MAAS_WORKERS", bad)
        with pytest.raises(ValidationError, match="workers"):
            Settings()


def test_auto_workers_are_the_cores_allowed_lowered_by_a_cgroup_cpu_quota() -> None:
    assert usable_cores(8, None) == 8  # no cgroup v2 CPU controller
    assert usable_cores(8, "max 100000\n") == 8  # a cgroup without a limit
    assert usable_cores(64, "200000 100000\n") == 2  # a pod limited to 2 CPUs on a 64-core node
    assert usable_cores(64, "150000 100000") == 2  # 1.5 CPUs: rounded up
    assert usable_cores(64, "50000 100000") == 1  # half a CPU: still one worker
    assert usable_cores(2, "800000 100000") == 2  # a quota above the CPUs allowed changes nothing
    assert usable_cores(1, None) == 1  # one core: one process, as before
    assert usable_cores(4, "garbage") == 4 and usable_cores(4, "") == 4


def test_the_cpu_quota_is_read_from_cgroup_v2_or_else_v1(tmp_path: Path) -> None:
    assert cpu_quota(tmp_path) is None  # neither mounted
    v1 = tmp_path / "v1" / "cpu,cpuacct"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("150000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cores(64, cpu_quota(tmp_path / "v1")) == 2  # a 1.5-CPU limit on an older node
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert usable_cores(64, cpu_quota(tmp_path / "v1")) == 64  # no limit
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "cpu.max").write_text("300000 100000\n")
    assert usable_cores(64, cpu_quota(tmp_path / "v2")) == 3
