from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, field_validator, model_validator

from sluice.settings import CoreSettings
from sluice_services.log_tail.files import parse_files


class LogTailSettings(CoreSettings):
    service_name: str = "log-tail"
    renamed: ClassVar[dict[str, str]] = {"log_tail_seed_delay": "dev_log_tail_seed_delay"}
    log_tail_files: str = Field("", description="name=path pairs, comma-separated.")
    log_tail_files_file: Path | None = Field(None, description="A file of name=path lines.")
    log_tail_max_lines: int = Field(1000, ge=1, le=100_000, description="Largest ?lines=.")
    log_tail_max_line_bytes: int = Field(65_536, ge=256, description="Longer lines are cut.")
    log_tail_follower_buffer: int = Field(
        10_000, ge=10, description="Lines queued per follower before it gets a gap."
    )
    log_tail_poll_interval: float = Field(
        0.5, gt=0, description="Seconds between checks when inotify is quiet or unavailable."
    )
    log_tail_resume_max_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Most a resume reads back from the file."
    )
    log_tail_grep_max: int = Field(256, ge=1, le=4096, description="Longest grep pattern.")
    dev_log_tail_seed_delay: float = Field(
        1.5, ge=0, description="Seconds between /logs demo lines."
    )

    # Parsed here too, not only when the app is built, so a bad list is named as a setting
    # before anything starts (a ConfigError is a ValueError).
    @field_validator("log_tail_files")
    @classmethod
    def _files_parse(cls, value: str) -> str:
        parse_files(value, None)
        return value

    @field_validator("log_tail_files_file")
    @classmethod
    def _files_file_parses(cls, value: Path | None) -> Path | None:
        if value is not None:
            parse_files("", value)
        return value

    @model_validator(mode="after")
    def _not_its_own_log(self) -> LogTailSettings:
        parse_files(self.log_tail_files, self.log_tail_files_file, own_log=self.log_file)
        return self
