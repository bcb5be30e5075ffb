"""The module's parameters, defined once.

In Slicer, parameter_node_class() turns this table into the typed @parameterNodeWrapper class that binds the
panel's widgets (their SlicerParameterName property) to the scene's parameter node, so a saved scene restores
the panel. Headless, process_arguments() maps the same values onto DareFuseLogic.process.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from .constants import CONTRASTS

NODE, BOOL, CHOICE = "node", "bool", "choice"
#: Widget class that shows each kind of parameter in Resources/UI/DareFuseSlicer.ui.
WIDGET_CLASSES = {NODE: "qMRMLNodeComboBox", BOOL: "QCheckBox", CHOICE: "QComboBox"}


@dataclass(frozen=True)
class Parameter:
    name: str  # attribute of the parameter node wrapper and SlicerParameterName of its widget
    kind: str  # NODE, BOOL or CHOICE
    default: Any = None
    node_class: str = ""  # NODE: the MRML class the selector offers
    choices: Tuple[str, ...] = ()  # CHOICE: the values, in the order the combo box lists them
    process_argument: str = ""  # the DareFuseLogic.process argument it sets ("" for a layer switch)
    output: str = ""  # BOOL layer switches: the output (constants.OUTPUTS) they enable


PARAMETERS = (
    *(Parameter(name, NODE, None, node_class="vtkMRMLScalarVolumeNode", process_argument=name) for name in CONTRASTS),
    Parameter("segmentationOutput", BOOL, True, output="segmentation"),
    Parameter("uncertaintyOutput", BOOL, True, output="uncertainty"),
    Parameter("priorOutput", BOOL, True, output="prior"),
    Parameter("gradcamOutput", BOOL, True, output="gradcam"),
    Parameter("device", CHOICE, "cpu", choices=("cpu", "cuda"), process_argument="device"),
    Parameter("classGate", BOOL, True, process_argument="class_gate"),
)
BY_NAME: Dict[str, Parameter] = {parameter.name: parameter for parameter in PARAMETERS}


def defaults() -> Dict[str, Any]:
    return {parameter.name: parameter.default for parameter in PARAMETERS}


def process_arguments(values: Mapping[str, Any]) -> Dict[str, Any]:
    """DareFuseLogic.process keyword arguments from parameter values (missing ones take their defaults)."""
    merged = defaults()
    merged.update({name: value for name, value in values.items() if name in BY_NAME})
    arguments: Dict[str, Any] = {p.process_argument: merged[p.name] for p in PARAMETERS if p.process_argument}
    arguments["outputs"] = tuple(p.output for p in PARAMETERS if p.output and merged[p.name])
    return arguments


def values_of(wrapper: Any) -> Dict[str, Any]:
    """Parameter values read from a parameter node wrapper (or any object with these attributes)."""
    return {parameter.name: getattr(wrapper, parameter.name) for parameter in PARAMETERS}


_wrapper_class: Optional[type] = None


def parameter_node_class() -> type:
    """The typed parameter node class for Slicer (slicer.parameterNodeWrapper), built once from PARAMETERS."""
    global _wrapper_class
    if _wrapper_class is None:
        from typing import Annotated

        import slicer
        from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper

        annotations: Dict[str, Any] = {}
        namespace: Dict[str, Any] = {"__doc__": "DareFuseSlicer parameters (see DareFuseSlicerLib/parameters.py)."}
        for parameter in PARAMETERS:
            if parameter.kind == NODE:
                annotations[parameter.name] = getattr(slicer, parameter.node_class)
            elif parameter.kind == BOOL:
                annotations[parameter.name] = bool
                namespace[parameter.name] = parameter.default
            else:
                annotations[parameter.name] = Annotated[str, Choice(list(parameter.choices))]
                namespace[parameter.name] = parameter.default
        namespace["__annotations__"] = annotations
        _wrapper_class = parameterNodeWrapper(type("DareFuseSlicerParameterNode", (), namespace))
    return _wrapper_class
