"""Scene files: a ready headless scene, .seg.nrrd and volumes through storage nodes, scene bundles (.mrb).

Everything is read and written through Slicer's own storage nodes on the given scene, so the files are exactly
what Slicer writes and reads. Writes are atomic: a file appears under its name only when it is complete (it is
written in a temporary folder beside the destination and then renamed), so a failed or interrupted run leaves no
partial file behind.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator, Optional, Union

import slicer

from ..errors import InputError

PathLike = Union[str, "os.PathLike[str]"]


def new_scene() -> slicer.vtkMRMLScene:
    """An empty scene set up as the Slicer application sets up its own, minus the GUI.

    It has the default colour tables (so colour maps and label colours resolve), a
    subject hierarchy, the markups storage node (so point lists are saved), a four-up layout with Red/Yellow/Green slice views and their composite nodes (so display
    set-up and saved scenes carry the slice layers).
    """
    scene = slicer.vtkMRMLScene()
    application = slicer.vtkSlicerApplicationLogic()
    application.SetMRMLScene(scene)
    # vtkMRMLColorLogic, not vtkSlicerColorLogic: the latter also looks for colour files of the application's
    # share folder, which a headless install does not have (it logs an error for each scene).
    colours = slicer.vtkMRMLColorLogic()
    colours.SetMRMLApplicationLogic(application)
    colours.SetMRMLScene(scene)
    application.SetColorLogic(colours)
    slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)  # creates the scene's hierarchy
    # Markups point lists are stored as .mrk.json; the application's Markups module registers that storage node.
    if not scene.IsNodeClassRegistered("vtkMRMLMarkupsJsonStorageNode"):
        scene.RegisterNodeClass(slicer.vtkMRMLMarkupsJsonStorageNode())
    layout = slicer.vtkMRMLLayoutLogic()
    layout.SetMRMLScene(scene)
    layout.GetLayoutNode().SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
    slice_logics = []
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
        slice_node = scene.GetNthNodeByClass(index, "vtkMRMLSliceNode")
        slice_logic = slicer.vtkMRMLSliceLogic()
        slice_logic.SetMRMLApplicationLogic(application)
        slice_logic.SetMRMLScene(scene)
        slice_logic.SetSliceNode(slice_node)  # creates the view's slice composite node
        slice_logics.append(slice_logic)
    # The logics have put their nodes in the scene; detach them so that nothing keeps the scene alive (a logic
    # holds a reference to its scene: kept beside it, every scene of a batch would leak). Detached first, the
    # colour logic also leaves its colour tables in place when it is deleted.
    for logic in (*slice_logics, layout, colours, application):
        logic.SetMRMLScene(None)
    return scene


@contextlib.contextmanager
def vtk_messages_kept_off_stderr() -> Iterator[None]:
    """VTK prints reader problems on stderr itself (its output window and its logger); callers report them
    once, as an InputError. The previous settings are restored afterwards (this may run inside a larger
    program). vtkLogger has no getter for the stderr level; with no log file open, the current cut-off is
    that level."""
    from vtkmodules.vtkCommonCore import vtkLogger, vtkOutputWindow, vtkStringOutputWindow

    verbosity = vtkLogger.GetCurrentVerbosityCutoff()
    window = vtkOutputWindow.GetInstance()
    window.Register(None)  # keep the previous instance alive while another one is installed
    vtkOutputWindow.SetInstance(vtkStringOutputWindow())
    vtkLogger.SetStderrVerbosity(vtkLogger.VERBOSITY_OFF)
    try:
        yield
    finally:
        vtkLogger.SetStderrVerbosity(verbosity)
        vtkOutputWindow.SetInstance(window)
        window.UnRegister(None)


@contextlib.contextmanager
def _keep_working_directory() -> Iterator[None]:
    """vtkMRMLScene's bundle reader changes the working directory and, when it fails, leaves it in a folder that
    is then deleted; every later relative path (and subprocess) of the process would fail."""
    saved = os.getcwd()
    try:
        yield
    finally:
        os.chdir(saved)


@contextlib.contextmanager
def _atomic_path(path: PathLike) -> Iterator[Path]:
    """Yields a temporary path with the same file name; on success it replaces `path` in one rename."""
    target = Path(path).resolve()
    if not target.parent.is_dir():
        raise InputError(f"Output folder '{target.parent}' does not exist.")
    staging = Path(tempfile.mkdtemp(prefix=".darefuse-", dir=target.parent))
    try:
        staged = staging / target.name
        yield staged
        if not staged.is_file():
            raise RuntimeError(f"nothing was written for {target}")
        os.replace(staged, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_with(storage: slicer.vtkMRMLStorageNode, node: slicer.vtkMRMLStorableNode, path: PathLike) -> Path:
    target = Path(path).resolve()
    with _atomic_path(target) as staged:
        storage.SetFileName(str(staged))
        if not storage.WriteData(node):
            raise RuntimeError(f"Slicer could not write '{target.name}': {_messages(storage)}")
    return target


def _messages(storage: slicer.vtkMRMLStorageNode) -> str:
    messages = storage.GetUserMessages()
    if messages is None or messages.GetNumberOfMessages() == 0:
        return "no reason given"
    return messages.GetAllMessagesAsString().strip()


def save_segmentation(node: slicer.vtkMRMLSegmentationNode, path: PathLike) -> Path:
    """Write a segmentation as .seg.nrrd (segment names, colours, terminology and geometry kept).

    The node's scene is not modified: a storage node is used without being added to it.
    """
    if not str(path).endswith(".seg.nrrd"):
        raise ValueError(f"{path}: a segmentation file name must end with .seg.nrrd")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    return _write_with(storage, node, path)


def save_volume(node: slicer.vtkMRMLScalarVolumeNode, path: PathLike) -> Path:
    """Write a volume in the format its extension names (.nii.gz, .nrrd, .mha, ...), geometry kept."""
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetUseCompression(1)
    return _write_with(storage, node, path)


def save_scene_bundle(scene: slicer.vtkMRMLScene, path: PathLike) -> Path:
    """Write the whole scene, data included, as a Slicer scene bundle (.mrb).

    Storable nodes without a storage node get Slicer's default one. The scene's storage nodes are pointed at the
    bundle's temporary folder while writing, as Slicer's own "Save" does.
    """
    if not str(path).endswith(".mrb"):
        raise ValueError(f"{path}: a scene bundle file name must end with .mrb")
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLStorableNode")):
        storable = scene.GetNthNodeByClass(index, "vtkMRMLStorableNode")
        if storable.GetSaveWithScene() and storable.GetStorageNode() is None:
            storable.AddDefaultStorageNode()
    messages = slicer.vtkMRMLMessageCollection()
    target = Path(path).resolve()
    with _atomic_path(target) as staged, _keep_working_directory():
        if not scene.WriteToMRB(str(staged), None, messages):
            raise RuntimeError(f"Slicer could not write '{target.name}': {messages.GetAllMessagesAsString().strip()}")
    return target


def _read_with(scene: slicer.vtkMRMLScene, node: slicer.vtkMRMLStorableNode,
               storage: slicer.vtkMRMLStorageNode, path: PathLike, what: str) -> slicer.vtkMRMLStorableNode:
    source = Path(path)
    if not source.is_file():
        raise InputError(f"{what} file '{source}' does not exist.")
    storage.SetFileName(str(source))
    scene.AddNode(storage)
    scene.AddNode(node)
    node.SetAndObserveStorageNodeID(storage.GetID())
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise InputError(f"{what} file '{source}' could not be read: {_messages(storage)}")
    node.CreateDefaultDisplayNodes()
    return node


def _stem(path: PathLike) -> str:
    name = Path(path).name
    for extension in (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(extension):
            return name[: -len(extension)]
    return Path(name).stem


def load_volume(scene: slicer.vtkMRMLScene, path: PathLike, name: Optional[str] = None,
                label_map: bool = False) -> slicer.vtkMRMLScalarVolumeNode:
    """Read an image file into `scene` through a volume storage node (as Slicer's "Add data" does)."""
    node = slicer.vtkMRMLLabelMapVolumeNode() if label_map else slicer.vtkMRMLScalarVolumeNode()
    node.SetName(scene.GenerateUniqueName(name or _stem(path)))
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetSingleFile(1)  # one file per volume: never gather a "series" of similar names in the folder
    return _read_with(scene, node, storage, path, "Volume")


def load_segmentation(scene: slicer.vtkMRMLScene, path: PathLike,
                      name: Optional[str] = None) -> slicer.vtkMRMLSegmentationNode:
    """Read a .seg.nrrd into `scene` through a segmentation storage node."""
    node = slicer.vtkMRMLSegmentationNode()
    node.SetName(scene.GenerateUniqueName(name or _stem(path)))
    return _read_with(scene, node, slicer.vtkMRMLSegmentationStorageNode(), path, "Segmentation")


def load_scene_bundle(path: PathLike, scene: Optional[slicer.vtkMRMLScene] = None) -> slicer.vtkMRMLScene:
    """Read a .mrb into a new scene (or `scene`, added to what it holds).

    Reading a bundle needs Slicer's data I/O logics with a cache folder, which a headless scene lacks; they are
    set up here for the duration of the read.
    """
    source = Path(path).resolve()
    if not source.is_file():
        raise InputError(f"Scene bundle '{source}' does not exist.")
    if not zipfile.is_zipfile(source):
        raise InputError(f"Scene bundle '{source}' is not a Slicer scene bundle (.mrb is a zip archive).")
    scene = scene if scene is not None else new_scene()
    cache_dir = tempfile.mkdtemp(prefix="darefuse-cache-")
    cache = slicer.vtkCacheManager()
    cache.SetRemoteCacheDirectory(cache_dir)
    io_manager = slicer.vtkDataIOManager()
    io_manager.SetCacheManager(cache)
    remote_io = slicer.vtkMRMLRemoteIOLogic()
    io_logic = slicer.vtkDataIOManagerLogic()
    try:
        with _keep_working_directory():
            scene.SetCacheManager(cache)
            scene.SetDataIOManager(io_manager)
            remote_io.SetMRMLScene(scene)
            remote_io.SetCacheManager(cache)
            remote_io.SetDataIOManager(io_manager)
            io_logic.SetMRMLScene(scene)
            io_logic.SetAndObserveDataIOManager(io_manager)
            messages = slicer.vtkMRMLMessageCollection()
            if not scene.ReadFromMRB(str(source), False, messages):
                raise InputError(f"Scene bundle '{source}' could not be read: "
                                 f"{messages.GetAllMessagesAsString().strip() or 'not a Slicer scene bundle'}")
    finally:
        # The cache folder goes away: leave no reference to it in the scene.
        io_logic.SetMRMLScene(None)
        remote_io.SetMRMLScene(None)
        scene.SetDataIOManager(None)
        scene.SetCacheManager(None)
        shutil.rmtree(cache_dir, ignore_errors=True)
    return scene
