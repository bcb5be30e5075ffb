"""The panel without Qt: its .ui is valid Qt Designer XML, and the widget code only touches widgets the .ui
defines and only calls logic that exists (and is tested elsewhere), read from the source."""
import ast
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from DareFuseSlicerLib.logic import DareFuseLogic
from DareFuseSlicerLib.review_session import ReviewSession

MODULE_DIR = Path(__file__).resolve().parents[2] / "DareFuseSlicer"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "DareFuseSlicer.ui"
#: Classes Qt Designer knows without a <customwidget> entry.
QT_CLASSES = {"QWidget", "QLabel", "QPushButton", "QCheckBox", "QComboBox", "QTableWidget", "QProgressBar",
              "QVBoxLayout", "QHBoxLayout", "QFormLayout", "QGridLayout", "QLineEdit", "QSpinBox",
              "QDoubleSpinBox", "QSlider", "QGroupBox"}


def _ui():
    return ElementTree.parse(UI_FILE).getroot()


def _widget_source():
    return ast.parse((MODULE_DIR / "DareFuseSlicer.py").read_text())


def _attributes_of(tree, owner: str):
    """Names X used as self.<owner>.X in the module."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) \
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "self" \
                and node.value.attr == owner:
            found.add(node.attr)
    return found


def test_the_ui_file_is_designer_xml_with_every_class_declared():
    root = _ui()
    assert root.tag == "ui" and root.find("widget").get("class") == "qMRMLWidget"
    custom = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")} | {layout.get("class") for layout in root.iter("layout")}
    assert used - custom - QT_CLASSES == set()
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "widget names must be unique"


def test_the_review_section_is_in_the_panel():
    names = {w.get("name") for w in _ui().iter("widget")}
    assert {"reviewCollapsibleButton", "reviewTable", "nextRegionButton", "previousRegionButton", "reviewedCheckBox",
            "reviewStatusLabel", "uncertaintyThresholdSlider", "exportReviewButton",
            "saveSegmentationButton"} <= names
    slider = next(w for w in _ui().iter("widget") if w.get("name") == "uncertaintyThresholdSlider")
    values = {p.get("name"): float(p[0].text) for p in slider.iter("property") if p.get("name") in ("minimum", "maximum")}
    assert values == {"minimum": 0.0, "maximum": 1.0}


def test_the_widget_touches_only_widgets_the_ui_defines():
    names = {w.get("name") for w in _ui().iter("widget")}
    used = _attributes_of(_widget_source(), "ui")
    assert used and used - names == set()


def test_the_widget_calls_only_logic_and_review_methods_that_exist():
    tree = _widget_source()
    logic_calls = _attributes_of(tree, "logic") - {"getParameterNode"}  # the module's own logic class adds it
    review_calls = _attributes_of(tree, "_review")
    assert {"start_review", "run_outputs", "set_uncertainty_threshold", "uncertainty_threshold",
            "latest_reviewable"} <= logic_calls
    logic = DareFuseLogic()  # instance attributes (its worker pool) count too
    assert all(hasattr(logic, name) for name in logic_calls), logic_calls
    assert {"go_to", "next", "previous", "set_reviewed", "counts", "volumes_ml", "export",
            "save_segmentation"} <= review_calls
    assert all(hasattr(ReviewSession, name) or name in ("segmentation", "current", "regions")
               for name in review_calls), review_calls
