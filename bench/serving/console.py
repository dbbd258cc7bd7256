"""Progress lines on stdout and the number formats every table uses."""

from __future__ import annotations

import time


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def fmt_num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def fmt_cores(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
