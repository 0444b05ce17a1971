"""The HTML report renders in real headless Chromium (Debian package `chromium`): a screenshot that is
not blank, and a DOM whose text holds the totals. Offline: the page needs no network."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from recon_fixture import MONTH, NOW

from metering import warehouse
from metering.reports import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed and could not be (Debian: apt-get install -y chromium; `make test` tries)",
)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--disable-dev-shm-usage", "--hide-scrollbars"]


def _chromium(args: list[str], home: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={home / 'profile'}", *args],
        capture_output=True, timeout=120, env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
        check=False,
    )


def _png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB/RGBA PNG into rows of raw pixel bytes (no imaging library needed)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6), (depth, color)
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, rows


def test_report_renders_in_headless_chromium(reconciled_warehouse, tmp_path):
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        files = write_report(con, MONTH, tmp_path / "report", generated_at=NOW)
    url = files.html.resolve().as_uri()

    shot = tmp_path / "shot.png"
    run = _chromium([f"--screenshot={shot}", "--window-size=1200,1600", url], tmp_path)
    assert shot.exists(), run.stderr.decode(errors="replace")[-2000:]
    width, height, rows = _png_pixels(shot.read_bytes())
    assert (width, height) == (1200, 1600)
    bpp = len(rows[0]) // width
    colours, non_white = set(), 0
    for row in rows[::4]:
        for x in range(0, width, 4):
            px = row[x * bpp:x * bpp + 3]
            colours.add(px)
            non_white += px != b"\xff\xff\xff"
    assert non_white > 2000, "screenshot is blank"
    assert len(colours) > 20  # text, cards and coloured chart bars, not one flat colour
    # the chart colours are on screen: ours (#2f6fde) and Stripe (#f08c2e)
    assert b"\x2f\x6f\xde" in colours and b"\xf0\x8c\x2e" in colours

    dom = _chromium(["--dump-dom", url], tmp_path)
    assert dom.returncode == 0, dom.stderr.decode(errors="replace")[-2000:]
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom.stdout.decode()))
    for phrase in ("Billing reconciliation — 2026-10", "172.00 USD", "162.76 USD", "-9.24 USD", "11.15 USD",
                   "33.3%", "500 JPY", "usd: 1 minor unit(s) per line", "late_after_finalization"):
        assert phrase in text, phrase
