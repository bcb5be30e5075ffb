"""The module file imports headless, and the extension's own files (CMake, .s4ext, icon, CI) agree."""
import importlib
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "DareFuseSlicer"


def test_module_imports_headless_with_logic_and_test_only():
    module = importlib.import_module("DareFuseSlicer")
    assert module.IN_SLICER_APP is False
    from DareFuseSlicerLib.logic import DareFuseLogic

    assert module.DareFuseSlicerLogic is DareFuseLogic
    assert hasattr(module, "DareFuseSlicerTest")
    assert not hasattr(module, "DareFuseSlicerWidget")  # needs Qt


def test_module_import_needs_no_torch_or_gui():
    """Slicer imports every module at startup, and registers the sample data then (from sample_data.json):
    nothing heavy or missing may be imported for that (neither torch nor the data engine with SciPy)."""
    import subprocess

    code = ("import sys; sys.path.insert(0, %r); import DareFuseSlicer; "
            "from DareFuseSlicerLib.sampledata import sample_data_source; sample_data_source(); "
            "heavy = [m for m in ('torch', 'monai', 'pytorch_grad_cam', 'qt', 'scipy', 'nilearn', "
            "'DareFuseSlicerLib.phantoms.engine') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)") % str(MODULE_DIR)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def _cmake_set(text, name):
    match = re.search(r'set\(%s "([^"]*)"\)' % name, text)
    return match.group(1) if match else None


def test_extension_metadata():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert _cmake_set(cmake, "EXTENSION_CATEGORY") == "Segmentation"
    assert _cmake_set(cmake, "EXTENSION_DEPENDS") == "PyTorch"
    for name in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                 "EXTENSION_SCREENSHOTURLS"):
        assert _cmake_set(cmake, name), name
    assert "add_subdirectory(DareFuseSlicer)" in cmake
    s4ext = dict(line.split(" ", 1) for line in (ROOT / "DareFuseSlicer.s4ext").read_text().splitlines()
                 if line.strip() and not line.startswith("#"))
    assert s4ext["category"] == "Segmentation" and s4ext["depends"] == "PyTorch"
    assert s4ext["homepage"] == _cmake_set(cmake, "EXTENSION_HOMEPAGE")
    assert s4ext["iconurl"] == _cmake_set(cmake, "EXTENSION_ICONURL")
    # the icon and screenshot URLs point at files of this repository, the same in CMake and the .s4ext
    raw = "https://raw.githubusercontent.com/darefuse/DareFuseSlicer/main/"
    assert s4ext["screenshoturls"] == _cmake_set(cmake, "EXTENSION_SCREENSHOTURLS")
    for url in (_cmake_set(cmake, "EXTENSION_ICONURL"), *_cmake_set(cmake, "EXTENSION_SCREENSHOTURLS").split()):
        assert url.startswith(raw) and (ROOT / url[len(raw):]).is_file(), url


def test_catalog_entry_for_slicer_5_8_and_later():
    """Slicer 5.8+ reads a JSON catalog entry (schema slicer-extension-catalog-entry v1.0.1: $schema, category
    and scm_url required, no other keys than the schema's); it must say what the .s4ext (Slicer 5.6) says."""
    import json

    entry = json.loads((ROOT / "DareFuseSlicer.json").read_text())
    allowed = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
               "build_dependencies": list, "build_subdirectory": str, "enabled": bool, "tier": int}
    assert set(entry) <= set(allowed) and {"$schema", "category", "scm_url"} <= set(entry)
    assert all(isinstance(entry[key], allowed[key]) for key in entry)
    assert entry["$schema"].endswith("/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert 1 <= entry["tier"] <= 5
    s4ext = dict(line.split(" ", 1) for line in (ROOT / "DareFuseSlicer.s4ext").read_text().splitlines()
                 if line.strip() and not line.startswith("#"))
    assert entry["category"] == s4ext["category"]
    assert entry["build_dependencies"] == s4ext["depends"].split()
    assert (entry["scm_url"], entry["scm_revision"]) == (s4ext["scmurl"], s4ext["scmrevision"])
    assert entry["build_subdirectory"] == s4ext["build_subdirectory"]


def test_module_cmake_lists_existing_resources():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in cmake and "WITH_GENERIC_TESTS" in cmake
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in cmake
    listed = [entry.replace("${MODULE_NAME}", "DareFuseSlicer")
              for entry in re.findall(r"^\s+(Resources/\S+)$", cmake, re.MULTILINE)]
    explicit = [entry for entry in listed if "*" not in entry]
    assert len(explicit) == 4
    for entry in explicit:
        assert (MODULE_DIR / entry).is_file(), entry
    # every resource file in the folder is installed, by name or by a glob
    from fnmatch import fnmatch

    for path in (MODULE_DIR / "Resources").rglob("*"):
        relative = path.relative_to(MODULE_DIR).as_posix()
        if path.is_file() and not path.name.startswith("."):
            assert any(fnmatch(relative, entry) for entry in listed), f"{relative} is not installed"


def test_icon_is_a_128_pixel_png():
    from PIL import Image

    with Image.open(MODULE_DIR / "Resources" / "Icons" / "DareFuseSlicer.png") as icon:
        assert icon.format == "PNG" and icon.size == (128, 128)
        colours = icon.convert("RGB").getcolors(128 * 128)
        assert len(colours) > 50  # a picture, not a flat square


def test_ci_workflow_runs_the_self_test_under_xvfb():
    text = (ROOT / ".github" / "workflows" / "slicer-selftest.yml").read_text()
    for needed in ("xvfb-run", "--testing", "installExtensionFromServer('PyTorch'",
                   "slicer.testing.runUnitTest", "requirements.txt", "-c constraints.txt",
                   "DAREFUSE_SELFTEST_REQUIRE_PACKAGES: \"1\"", "set -o pipefail"):
        assert needed in text, needed
    # the install steps come before the testing-mode run (testing mode skips installs)
    assert text.index("installTorch") < text.index("--testing")
    # the test runs with the main window: without it there are no slice views to check
    test_step = text[text.index("--testing") - 200:]
    assert "--no-main-window" not in test_step
    # the oldest supported Slicer and the latest release
    assert re.search(r"version=5\.6\.\d", text) and "stability=release" in text
    assert re.search(r"matrix:\s+slicer:", text)


@pytest.mark.parametrize("name", ["DareFuseSlicer.py", "DareFuseSlicerLib/logic.py", "DareFuseSlicerLib/parameters.py",
                                  "DareFuseSlicerLib/runner.py", "DareFuseSlicerLib/workerpool.py", "DareFuseSlicerLib/worker.py",
                                  "DareFuseSlicerLib/exchange.py", "DareFuseSlicerLib/sampledata.py",
                                  "DareFuseSlicerLib/progress.py", "DareFuseSlicerLib/errors.py",
                                  "DareFuseSlicerLib/pipeline/diskspace.py",
                                  "DareFuseSlicerLib/scene/volumes.py", "DareFuseSlicerLib/scene/segmentation.py",
                                  "DareFuseSlicerLib/scene/display.py", "DareFuseSlicerLib/scene/files.py",
                                  "DareFuseSlicerLib/scene/nodes.py", "DareFuseSlicerLib/scene/review.py",
                                  "DareFuseSlicerLib/review_session.py", "DareFuseSlicerLib/pipeline/review.py"])
def test_python_39_syntax(name):
    """Slicer 5.6 runs Python 3.9: the Slicer-side files must parse as 3.9 (no match, no X | Y at runtime)."""
    import ast

    source = (MODULE_DIR / name).read_text()
    ast.parse(source, feature_version=(3, 9))
    if name != "DareFuseSlicer.py":
        assert "from __future__ import annotations" in source
