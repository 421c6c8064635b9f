"""The declared version window: setup.cfg's floors, constraints/lowest.txt (the lowest-versions CI job) and the
tested window of transformers and peft agree, and an untested version gets one clear warning at import."""

from __future__ import annotations

import configparser
import json
import subprocess
import sys
import warnings

import pytest
from packaging.requirements import Requirement
from packaging.version import Version
from tiny_models import REPO_ROOT, subprocess_env

from peft_superpos._peft_compat import versions

NOT_PINNED = {"torch"}  # the lowest job uses the README's torch==2.13.0 (see constraints/lowest.txt)


def setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(REPO_ROOT / "setup.cfg")
    return parser


def floors() -> dict[str, Version]:
    """The lower bound of every requirement of install_requires and of the test extra that has one."""
    config = setup_cfg()
    lines = config["options"]["install_requires"].splitlines() + config["options.extras_require"]["test"].splitlines()
    result = {}
    for line in filter(None, (line.strip() for line in lines)):
        requirement = Requirement(line)
        lows = [Version(spec.version) for spec in requirement.specifier if spec.operator == ">="]
        if lows:
            result[requirement.name] = max(lows)
    return result


def lowest_pins() -> dict[str, Version]:
    pins = {}
    for line in (REPO_ROOT / "constraints" / "lowest.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip()] = Version(version.strip())
    return pins


def test_lowest_constraints_pin_every_floor_of_setup_cfg():
    expected = {name: version for name, version in floors().items() if name not in NOT_PINNED}
    assert lowest_pins() == expected


def test_tested_window_is_the_one_setup_cfg_states():
    stated = {
        name: tuple(part.strip() for part in value.split(",")) for name, value in setup_cfg()["tested_versions"].items()
    }
    assert stated == versions.TESTED
    for name, (lowest, _) in versions.TESTED.items():
        assert Version(lowest) == floors()[name], name  # the lowest tested is the floor CI's lowest job installs


@pytest.mark.parametrize(
    ("installed", "untested"),
    [
        ({"transformers": "5.99.0", "peft": "0.21.2"}, "transformers 5.99.0 is untested"),
        ({"transformers": "5.24.0", "peft": "0.21.9"}, "peft 0.21.9 is untested"),
        ({"transformers": "6.0.0.dev0", "peft": "0.21.9"}, "transformers 6.0.0.dev0 and peft 0.21.9 are untested"),
    ],
)
def test_an_untested_version_gets_one_warning_naming_the_window(installed, untested):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        versions.warn_if_untested(installed)
    assert len(caught) == 1 and caught[0].category is versions.UntestedVersionWarning
    message = str(caught[0].message)
    (low_t, high_t), (low_p, high_p) = versions.TESTED["transformers"], versions.TESTED["peft"]
    assert f"tested with transformers {low_t} to {high_t} and peft {low_p} to {high_p}; {untested}" in message
    assert f'pip install "transformers>={low_t},<={high_t}" "peft>={low_p},<={high_p}"' in message


def test_tested_versions_get_no_warning():
    for name in versions.TESTED:
        for end in (0, 1):
            installed = {other: window[0] for other, window in versions.TESTED.items()}
            installed[name] = versions.TESTED[name][end]
            assert versions.untested_versions_message(installed) is None, installed


def test_import_warns_once_for_an_untested_transformers():
    """A fresh process that sees a newer transformers gets exactly one warning when it imports peft_superpos."""
    script = (
        "import json, warnings, peft, transformers\n"  # importing peft resets transformers.__version__
        "transformers.__version__ = '5.99.0'\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import peft_superpos\n"
        "print(json.dumps([str(w.message) for w in caught if w.category.__name__ == 'UntestedVersionWarning']))\n"
    )
    env = {**subprocess_env(), "PYTHONWARNINGS": "default"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    messages = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(messages) == 1 and "transformers 5.99.0 is untested" in messages[0]


@pytest.mark.parametrize("version", ["0.20.0", "0.22.0"])
def test_peft_outside_the_supported_release_is_an_error(version):
    with pytest.raises(ImportError, match=rf"supports peft>=0.21.0,<0.22.0 but peft {version} is installed"):
        versions.require_supported_peft(version)
