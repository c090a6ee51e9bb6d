"""The CLI's handling of settings, without starting anything."""

from __future__ import annotations

import pytest

from worker import cli


class TestSettings:
    def test_flag_overrides_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("RMOS_PROCESSES", "3")
        args = cli._parser().parse_args(["worker", "--processes", "2"])
        assert cli.build_settings(args).processes == 2
        args = cli._parser().parse_args(["worker"])
        assert cli.build_settings(args).processes == 3

    def test_store_flag(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("RMOS_STORE", "files")
        args = cli._parser().parse_args(["worker", "--store", "jetstream"])
        assert cli.build_settings(args).store == "jetstream"

    @pytest.mark.parametrize(
        ("argv", "env", "said"),
        [
            (["worker", "--processes", "0"], {}, "processes (RMOS_PROCESSES): Input should be"),
            (["list"], {"RMOS_BATCH_SIZE": "many"}, "batch_size (RMOS_BATCH_SIZE): Input should"),
            (["worker"], {"RMOS_STORE": "s3"}, "store (RMOS_STORE): Input should be 'files' or"),
            (["worker"], {"RMOS_STORE_REPLICAS": "0"}, "store_replicas (RMOS_STORE_REPLICAS): "),
        ],
    )
    def test_bad_setting_is_one_line_and_exit_2(
        self,
        argv: list[str],
        env: dict[str, str],
        said: str,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("rmos-runs: invalid setting ")
        assert said in err
        assert "Traceback" not in err
