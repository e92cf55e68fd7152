"""The supported transformers range: stated in setup.py, checked at import with both versions named."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from vlmzoo.versions import MIN_TRANSFORMERS, NEXT_MAJOR, check_transformers_version

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("version", ["5.23.0", "5.20.2", "4.57.6", "5.24.0.dev0", "6.0.0"])
def test_versions_outside_the_range_are_refused(version):
    with pytest.raises(ImportError, match=re.escape(f"transformers {version} is installed")) as error:
        check_transformers_version(version)
    assert f"transformers>={MIN_TRANSFORMERS},<{NEXT_MAJOR}" in str(error.value)


@pytest.mark.parametrize("version", [MIN_TRANSFORMERS, "5.24.3", "5.39.0"])
def test_versions_inside_the_range_are_accepted(version):
    check_transformers_version(version)


def test_import_with_an_older_transformers_raises_import_error_naming_both_versions():
    code = "import transformers; transformers.__version__ = '5.23.0'; import vlmzoo"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ImportError: vlmzoo needs transformers>=5.24.0,<6")
    assert "transformers 5.23.0 is installed" in last_line


def test_setup_py_states_the_same_floor():
    setup = (ROOT / "setup.py").read_text()
    floor = ".".join(MIN_TRANSFORMERS.split(".")[:2])
    assert f'"transformers>={floor},<{NEXT_MAJOR}"' in setup


def test_the_tested_set_pins_the_stack_within_the_supported_range():
    pins = dict(
        line.split("==", 1)
        for line in (ROOT / "constraints" / "tested.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    pins = {name.lower().replace("_", "-"): version for name, version in pins.items()}
    for package in ("torch", "transformers", "accelerate", "peft", "huggingface-hub", "safetensors", "tokenizers",
                    "pillow", "numpy"):
        assert package in pins, package
    assert pins["torch"] == "2.13.0"
    check_transformers_version(pins["transformers"])
