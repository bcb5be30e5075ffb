"""Every widget of the .ui bound to a parameter (SlicerParameterName) is one of parameters.PARAMETERS, and back."""
import inspect
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from DareFuseSlicerLib import constants, logic, parameters

UI_FILE = Path(__file__).resolve().parents[2] / "DareFuseSlicer" / "Resources" / "UI" / "DareFuseSlicer.ui"


def _property(widget, name):
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            return prop
    return None


def _bound_widgets():
    """SlicerParameterName -> <widget> element, for every widget that has one."""
    bound = {}
    for widget in ElementTree.parse(UI_FILE).getroot().iter("widget"):
        prop = _property(widget, "SlicerParameterName")
        if prop is not None:
            name = prop.findtext("string")
            assert name not in bound, f"two widgets bound to {name}"
            bound[name] = widget
    return bound


def test_ui_and_parameters_name_the_same_set():
    assert set(_bound_widgets()) == set(parameters.BY_NAME)


@pytest.mark.parametrize("parameter", parameters.PARAMETERS, ids=lambda p: p.name)
def test_widget_kind_matches_parameter(parameter):
    widget = _bound_widgets()[parameter.name]
    assert widget.get("class") == parameters.WIDGET_CLASSES[parameter.kind]
    if parameter.kind == parameters.NODE:
        node_types = [s.text for s in _property(widget, "nodeTypes").iter("string")]
        assert node_types == [parameter.node_class]
        # subclasses (label maps, vector volumes) are not offered: they are not MR images
        assert _property(widget, "showChildNodeTypes").findtext("bool") == "false"
        assert _property(widget, "noneEnabled").findtext("bool") == "true"  # every contrast is optional
    elif parameter.kind == parameters.BOOL:
        assert (_property(widget, "checked").findtext("bool") == "true") == parameter.default
    else:
        items = [item.find("property").findtext("string") for item in widget.findall("item")]
        assert tuple(items) == parameter.choices
        assert parameter.default in parameter.choices


def test_process_arguments_are_process_parameters():
    signature = inspect.signature(logic.DareFuseLogic.process)
    arguments = parameters.process_arguments(parameters.defaults())
    assert set(arguments) <= set(signature.parameters)
    assert arguments["outputs"] == constants.OUTPUTS  # all layers by default
    assert arguments["device"] == signature.parameters["device"].default
    assert arguments["class_gate"] is signature.parameters["class_gate"].default is True
    assert parameters.process_arguments({"classGate": False})["class_gate"] is False  # the panel's Advanced box


def test_layer_switches_map_to_outputs():
    assert {p.output for p in parameters.PARAMETERS if p.output} == set(constants.OUTPUTS)
    arguments = parameters.process_arguments({"gradcamOutput": False, "priorOutput": False, "t2": "node"})
    assert arguments["outputs"] == ("segmentation", "uncertainty")
    assert arguments["t2"] == "node" and arguments["t1"] is None


def test_values_of_reads_every_parameter():
    class Wrapper:
        pass

    wrapper = Wrapper()
    for parameter in parameters.PARAMETERS:
        setattr(wrapper, parameter.name, parameter.default)
    assert parameters.values_of(wrapper) == parameters.defaults()


def test_selectors_follow_the_scene():
    """Each node selector receives the scene from the top-level qMRMLWidget (else it stays empty in Slicer)."""
    root = ElementTree.parse(UI_FILE).getroot()
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    selectors = {w.get("name") for name, w in _bound_widgets().items()
                 if parameters.BY_NAME[name].kind == parameters.NODE}
    assert selectors <= receivers


def test_parameter_node_class_is_what_slicers_wrapper_reads(monkeypatch):
    """Slicer's parameterNodeWrapper reads typing.get_type_hints(cls, include_extras=True) and class defaults;
    here a recording decorator stands in for it (slicer-core has no parameterNodeWrapper)."""
    import sys
    import types
    import typing

    import slicer

    class Choice:
        def __init__(self, choices):
            self.choices = choices

    received = []
    module = types.ModuleType("slicer.parameterNodeWrapper")
    module.Choice = Choice
    module.parameterNodeWrapper = lambda cls: received.append(cls) or cls
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", module)
    monkeypatch.setattr(parameters, "_wrapper_class", None)
    cls = parameters.parameter_node_class()
    assert received == [cls]
    hints = typing.get_type_hints(cls, include_extras=True)
    assert list(hints) == [p.name for p in parameters.PARAMETERS]
    for parameter in parameters.PARAMETERS:
        hint = hints[parameter.name]
        if parameter.kind == parameters.NODE:
            assert hint is slicer.vtkMRMLScalarVolumeNode and not hasattr(cls, parameter.name)
        elif parameter.kind == parameters.BOOL:
            assert hint is bool and getattr(cls, parameter.name) is parameter.default
        else:
            assert typing.get_origin(hint) is typing.Annotated and typing.get_args(hint)[0] is str
            assert tuple(typing.get_args(hint)[1].choices) == parameter.choices
            assert getattr(cls, parameter.name) == parameter.default
