"""DareFuseSlicer: brain-tumour MRI segmentation, uncertainty, lesion-removal prior and Grad-CAM++ in 3D Slicer.

This file is thin: the work is in DareFuseSlicerLib (logic.py, scene/, pipeline/, network/). In the Slicer
application it defines the module, its widget, logic and self-test. Under the headless slicer-core package
(no application, no Qt) it imports too, and then offers the logic and the self-test only; the self-test then
works on a new scene of its own (pytest runs it: Testing/Python/test_module_selftest.py).

Inference runs in a separate process (DareFuseSlicerLib/runner.py, workerpool.py, worker.py): Slicer's own process
never imports torch, MONAI or pytorch-grad-cam; the panel polls the run with a QTimer.
"""
import logging
import os
import unittest

import slicer

from DareFuseSlicerLib import parameters
from DareFuseSlicerLib.constants import CONTRASTS
from DareFuseSlicerLib.dependencies import missing_requirements, protected_constraints
from DareFuseSlicerLib.errors import Cancelled, DareFuseError, InputError, WorkerError
from DareFuseSlicerLib.inputs import auto_assign_inputs, load_sample_case
from DareFuseSlicerLib.logic import DareFuseLogic, report_of, report_rows
from DareFuseSlicerLib.review_session import counts_text, existing_files, table_rows
from DareFuseSlicerLib.runner import WorkerBug

try:  # the Slicer application; slicer-core has neither Qt nor ScriptedLoadableModule
    import qt
    import vtk
    from slicer.ScriptedLoadableModule import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
    )
    from slicer.util import VTKObservationMixin

    IN_SLICER_APP = hasattr(slicer, "app")
except ImportError:
    IN_SLICER_APP = False

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
TERMINOLOGY_FILE = os.path.join(MODULE_DIR, "Resources", "Terminology", "DareFuseSlicer.term.json")
REQUIREMENTS_FILE = os.path.join(MODULE_DIR, "Resources", "requirements.txt")
#: Set (e.g. in CI, where the packages are installed first) to make the self-test fail, not skip, without them.
REQUIRE_PACKAGES_VARIABLE = "DAREFUSE_SELFTEST_REQUIRE_PACKAGES"
#: Minimum whole-tumour Dice of the bundled model on the bundled sample case (the self-test's pass mark).
#: The lead sets it from the measured figure of the released model (`darefuse demo` prints it), minus a margin.
SAMPLE_WT_DICE_MINIMUM = 0.85  # measured 0.940 with the bundled darefuse-v7 (README, model card)


def missingPackages():
    """What the inference process needs and this Python lacks, found without importing any of it (find_spec
    for torch, package metadata for Resources/requirements.txt): the inference process shares this Python's
    packages (PythonSlicer in Slicer)."""
    import importlib
    import importlib.util

    importlib.invalidate_caches()
    missing = [] if importlib.util.find_spec("torch") is not None else ["torch"]
    return missing + missing_requirements(REQUIREMENTS_FILE)


if IN_SLICER_APP:

    class DareFuseSlicer(ScriptedLoadableModule):
        def __init__(self, parent):
            ScriptedLoadableModule.__init__(self, parent)
            self.parent.title = "DareFuse Brain Tumour"
            self.parent.categories = ["Segmentation"]
            self.parent.dependencies = []
            self.parent.contributors = ["DareFuseSlicer contributors"]
            self.parent.helpText = (
                "Segments brain tumours (BraTS parts NETC, SNFH, ET) on any subset of T1, T1ce, T2 and FLAIR, "
                "with an uncertainty map, a lesion-removal difference prior, Grad-CAM++ evidence and a tumour "
                "class. Research software, not for clinical use. "
                '<a href="https://github.com/darefuse/DareFuseSlicer">Documentation</a>.'
            )
            self.parent.acknowledgementText = (
                "Built on 3D Slicer, MONAI, PyTorch, SimpleITK and pytorch-grad-cam. The bundled sample case is "
                "synthetic, drawn on the MNI ICBM152 2009a template."
            )
            if startupCompleted():  # loaded later (Extension Wizard, module paths): startupCompleted() has gone
                qt.QTimer.singleShot(0, registerResources)
            else:
                slicer.app.connect("startupCompleted()", registerResources)

    def startupCompleted():
        """Whether the application has loaded its modules: at start-up every module is instantiated before
        any is loaded (qSlicerApplicationHelper), so an empty list means this module is being created then."""
        return bool(slicer.app.moduleManager().modulesNames())

    def registerResources():
        for register in (registerTerminology, registerSampleData):
            try:
                register()
            except Exception as error:  # noqa: BLE001 - never break Slicer's start-up for an extra
                logging.warning(f"DareFuseSlicer: {register.__name__} failed: {error}")

    def registerTerminology():
        """Make the BraTS parts' SNOMED codes available to the Segment Editor's terminology selector."""
        slicer.modules.terminologies.logic().LoadTerminologyFromFile(TERMINOLOGY_FILE)

    def registerSampleData():
        """The bundled sample case in the Sample Data module, from sample_data.json alone (no file read or hashed
        at start-up: Sample Data checks each file's SHA256 when it loads it)."""
        import SampleData
        from DareFuseSlicerLib.sampledata import SAMPLE_PREFIX, sample_data_source

        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="DareFuseSlicer", sampleName=SAMPLE_PREFIX,
            thumbnailFileName=os.path.join(MODULE_DIR, "Resources", "Icons", "DareFuseSlicer.png"),
            **sample_data_source())

    def installPythonPackages(interactive=True):
        """torch from the PyTorch extension, the rest by pip, after asking; never at import, never replacing
        Slicer's own SimpleITK, numpy, SciPy or VTK (pinned with a pip constraints file). Returns "" when
        everything is in place, else one line saying what is missing or why it was not installed. In testing
        mode, or with interactive=False, nothing is installed. A failed install shows its error and returns."""
        missing = missingPackages()
        if not missing:
            return ""
        if not interactive or slicer.app.testingEnabled():
            return ("DareFuseSlicer needs Python packages that are not installed: " + ", ".join(missing)
                    + ". Press Apply once to install them (it asks first).")
        try:
            if "torch" in missing:
                try:
                    import PyTorchUtils
                except ImportError:
                    message = ("DareFuseSlicer needs the PyTorch extension: install it from the Extensions Manager, "
                               "restart Slicer and press Apply again.")
                    showError(message)
                    return message
                # Its installTorch imports torch into this process once, when it installs it (its return value).
                if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True) is None:
                    return "PyTorch was not installed."
            rest = missing_requirements(REQUIREMENTS_FILE)
            if rest and not slicer.util.confirmOkCancelDisplay(
                    "DareFuseSlicer needs these Python packages, installed once into Slicer's Python:\n\n"
                    + "\n".join(rest) + "\n\nSlicer's own SimpleITK, numpy, SciPy, VTK and PyTorch are kept. "
                    "Install now?", "DareFuseSlicer: install Python packages"):
                return "The Python packages were not installed."
            if rest:
                _pipInstall(rest)
        except Exception as error:  # noqa: BLE001 - light-the-torch or pip failed: say so, keep the panel usable
            import traceback

            showError(f"Installing the Python packages failed: {error}", traceback.format_exc())
            return f"Installing the Python packages failed: {error}"
        still = missingPackages()
        return "" if not still else ("Still missing after the install: " + ", ".join(still)
                                     + ". Restart Slicer and press Apply again.")

    def showError(text, details=""):
        """An error dialog (only logged in testing mode), with the details (a traceback, a log) folded away."""
        if details:
            slicer.util.errorDisplay(text, detailedText=details)
        else:
            slicer.util.errorDisplay(text)

    def _pipInstall(requirements):
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            constraints = os.path.join(folder, "constraints.txt")
            with open(constraints, "w") as handle:
                handle.write("\n".join(protected_constraints()) + "\n")
            with slicer.util.tryWithErrorDisplay("Installing the Python packages failed.", show=False,
                                                 waitCursor=True):
                # A list of arguments: Slicer 5.6's pip_install and later ones pass it to pip as it is.
                slicer.util.pip_install(["-c", constraints] + list(requirements))

    class DareFuseSlicerLogic(ScriptedLoadableModuleLogic, DareFuseLogic):
        """DareFuseLogic with the module's typed parameter node."""

        def __init__(self):
            ScriptedLoadableModuleLogic.__init__(self)
            DareFuseLogic.__init__(self)

        def getParameterNode(self):
            return parameters.parameter_node_class()(super().getParameterNode())

    class DareFuseSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
        """The panel: a small state machine (idle, running); Apply turns into Cancel.

        The run is the logic's (DareFuseLogic.start: the inference process); the widget only starts it, polls it
        from a QTimer on the main thread, cancels it and shows what it says.
        """

        IDLE, RUNNING = "idle", "running"
        POLL_MS = 200
        #: Minutes an idle inference process stays warm (its model loaded) for the next Apply.
        IDLE_MINUTES_SETTING = "DareFuseSlicer/WorkerIdleMinutes"

        def __init__(self, parent=None):
            ScriptedLoadableModuleWidget.__init__(self, parent)
            VTKObservationMixin.__init__(self)
            self.logic = None
            self._parameterNode = None
            self._parameterNodeGuiTag = None
            self._run = None
            self._state = self.IDLE
            self._review = None  # a review_session.ReviewSession: all review behaviour is there, tested
            self._uncertaintyNode = None

        def setup(self):
            ScriptedLoadableModuleWidget.setup(self)
            uiWidget = slicer.util.loadUI(self.resourcePath("UI/DareFuseSlicer.ui"))
            self.layout.addWidget(uiWidget)
            self.ui = slicer.util.childWidgetVariables(uiWidget)
            uiWidget.setMRMLScene(slicer.mrmlScene)
            self.logic = DareFuseSlicerLogic()
            minutes = slicer.app.userSettings().value(self.IDLE_MINUTES_SETTING, 10)
            self.logic.pool.idle_timeout_s = 60.0 * float(minutes)
            for table in (self.ui.classTable, self.ui.volumeTable):
                table.horizontalHeader().setStretchLastSection(True)
                table.verticalHeader().hide()
            self.ui.progressBar.hide()
            self._timer = qt.QTimer()
            self._timer.setInterval(self.POLL_MS)
            self._timer.connect("timeout()", self._poll)

            self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
            self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
            self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
            self.ui.autoAssignButton.connect("clicked(bool)", self.onAutoAssign)
            self.ui.loadSampleButton.connect("clicked(bool)", self.onLoadSample)
            self._setUpReview()
            self.initializeParameterNode()

        def cleanup(self):
            """The module is closed or reloaded: stop polling, end a run in progress and the warm inference
            process, and let go of the GUI."""
            self._timer.stop()
            if self._run is not None:
                self._run.cancel()
                self._run = None
            self.setParameterNode(None)
            self.removeObservers()
            self.logic.end_worker()

        def enter(self):
            self.initializeParameterNode()
            if self._review is None:  # e.g. a saved scene was loaded: resume its review
                segmentationNode = self.logic.latest_reviewable(slicer.mrmlScene)
                if segmentationNode is not None:
                    self._startReview(segmentationNode)

        def exit(self):
            if self._parameterNode:
                self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
                self._parameterNodeGuiTag = None
                self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

        def onSceneStartClose(self, caller, event):
            if self._run is not None:
                self._run.cancel()  # its nodes would go into a closed scene; _poll reports it
            self._stopReview()
            self.setParameterNode(None)

        def onSceneEndClose(self, caller, event):
            if self.parent.isEntered:
                self.initializeParameterNode()

        def initializeParameterNode(self):
            self.setParameterNode(self.logic.getParameterNode())
            if not any(getattr(self._parameterNode, name) for name in CONTRASTS):
                self.onAutoAssign()

        def setParameterNode(self, inputParameterNode):
            if self._parameterNode:
                self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
                self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._parameterNode = inputParameterNode
            if self._parameterNode:
                # connectParametersToGui returns its tag in every Slicer (connectGui only from 5.10): without the
                # tag the old connection stays and re-entering the module loses the device choice.
                self._parameterNodeGuiTag = self._parameterNode.connectParametersToGui(self._parameterWidgets())
                self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

        def _parameterWidgets(self):
            """Parameter name -> widget, from the widgets' SlicerParameterName property (as connectGui finds them)."""
            mapping = {}
            for widget in vars(self.ui).values():
                name = widget.property("SlicerParameterName") if hasattr(widget, "property") else None
                if name:
                    mapping[name] = widget
            return mapping

        # -- state ----------------------------------------------------------------------------------------
        def _setState(self, state):
            self._state = state
            self._updateButtons()

        def _updateButtons(self, caller=None, event=None):
            idle = self._state == self.IDLE
            for widget in (self.ui.inputsCollapsibleButton, self.ui.outputsCollapsibleButton,
                           self.ui.advancedCollapsibleButton):
                widget.enabled = idle
            self.ui.progressBar.visible = not idle
            if self._state == self.RUNNING:
                self.ui.applyButton.text, self.ui.applyButton.enabled = "Cancel", True
                self.ui.applyButton.toolTip = "Stop the run; nothing is added to the scene."
                return
            values = parameters.values_of(self._parameterNode) if self._parameterNode else {}
            arguments = parameters.process_arguments(values)
            has_input = any(arguments.get(name) for name in CONTRASTS)
            self.ui.applyButton.text = "Apply"
            self.ui.applyButton.enabled = bool(has_input and arguments["outputs"])
            self.ui.applyButton.toolTip = ("Run DARE-FUSE on the selected inputs." if self.ui.applyButton.enabled
                                           else "Select at least one input volume and one output.")

        # -- actions --------------------------------------------------------------------------------------
        def onAutoAssign(self):
            if not self._parameterNode:
                return
            assigned = auto_assign_inputs(slicer.mrmlScene)
            if assigned:
                wasModifying = self._parameterNode.StartModify()  # one GUI update for the four selectors
                for name in CONTRASTS:
                    setattr(self._parameterNode, name, assigned.get(name))
                self._parameterNode.EndModify(wasModifying)

        def onLoadSample(self):
            with slicer.util.tryWithErrorDisplay("Failed to load the sample case.", waitCursor=True):
                loaded = load_sample_case(slicer.mrmlScene)
                slicer.util.setSliceViewerLayers(background=loaded.get("flair") or next(iter(loaded.values())),
                                                 fit=True)
                self.onAutoAssign()

        def onApplyButton(self):
            if self._state == self.RUNNING:
                self._run.cancel()  # ends the inference process now (at most 2 s)
                self._poll()
                return
            if self._state != self.IDLE:
                return
            missing = installPythonPackages(interactive=True)
            if missing:
                self.ui.statusLabel.text = missing
                return
            arguments = parameters.process_arguments(parameters.values_of(self._parameterNode))
            try:
                self._run = self.logic.start(**arguments)
            except DareFuseError as error:
                showError(str(error), getattr(error, "details", ""))
                return
            except Exception as error:  # a bug: show it with its traceback, keep the panel usable
                import traceback

                showError(f"DareFuse could not start: {error}", traceback.format_exc())
                return
            self.ui.progressBar.setRange(0, 1000)
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = "Starting..."
            self._setState(self.RUNNING)
            self._timer.start()

        def _poll(self):
            run = self._run
            if run is None:
                self._timer.stop()
                return
            self.ui.progressBar.value = int(1000 * run.fraction)
            left = run.time_left
            self.ui.statusLabel.text = run.stage + (f" - {left}" if left else "")
            if not run.done:
                return
            self._timer.stop()
            self._run = None
            try:
                outputs = run.finish()
            except Cancelled as error:
                self.ui.statusLabel.text = str(error)
            except InputError as error:
                self.ui.statusLabel.text = "Stopped: the input could not be used."
                slicer.util.errorDisplay(str(error))
            except (WorkerError, WorkerBug) as error:  # the inference process died, or failed with a bug there
                self.ui.statusLabel.text = "Failed; nothing was added to the scene."
                showError(str(error), error.details)
            except Exception as error:  # a bug here: show it with its traceback, keep Slicer running
                import traceback

                self.ui.statusLabel.text = "Failed; nothing was added to the scene."
                showError(f"DareFuse failed: {error}", traceback.format_exc())
            else:
                self.ui.statusLabel.text = "Done. " + " ".join(outputs.report.get("warnings") or [])
                self._showReport(outputs.report)  # the views stay where the commit put them: on the tumour
                if outputs.segmentation is not None:
                    self._startReview(outputs.segmentation)
            finally:
                self._setState(self.IDLE)

        def _showReport(self, report, volumesOnly=False):
            rows = report_rows(report)
            if not volumesOnly:
                caution = " (low confidence: see the warnings)" if report.get("low_confidence") else ""
                self.ui.predictionLabel.text = f"Predicted class: {rows['predicted']}{caution}"
            tables = ((self.ui.volumeTable, "volumes"),) if volumesOnly else (
                (self.ui.classTable, "classes"), (self.ui.volumeTable, "volumes"))
            for table, key in tables:
                table.setRowCount(len(rows[key]))
                for row, (name, value) in enumerate(rows[key]):
                    table.setItem(row, 0, qt.QTableWidgetItem(name))
                    table.setItem(row, 1, qt.QTableWidgetItem(value))

        # -- review (issue 18): every action is one call of review_session.ReviewSession or the logic ---------
        def _setUpReview(self):
            self.ui.reviewTable.horizontalHeader().setStretchLastSection(True)
            self.ui.reviewTable.verticalHeader().hide()
            self._volumeTimer = qt.QTimer()
            self._volumeTimer.setSingleShot(True)
            self._volumeTimer.setInterval(500)  # volumes recounted once a paint stroke is over
            self._volumeTimer.connect("timeout()", self._refreshVolumes)
            self.ui.reviewTable.connect("cellClicked(int,int)", self.onReviewRowClicked)
            self.ui.nextRegionButton.connect("clicked(bool)", self.onNextRegion)
            self.ui.previousRegionButton.connect("clicked(bool)", self.onPreviousRegion)
            self.ui.reviewedCheckBox.connect("toggled(bool)", self.onReviewedToggled)
            self.ui.uncertaintyThresholdSlider.connect("valueChanged(double)", self.onThresholdChanged)
            self.ui.exportReviewButton.connect("clicked(bool)", self.onExportReview)
            self.ui.saveSegmentationButton.connect("clicked(bool)", self.onSaveSegmentation)
            self._updateReviewState()

        def _startReview(self, segmentationNode):
            self._stopReview()
            try:
                self._review = self.logic.start_review(segmentationNode)
            except InputError as error:
                self.ui.reviewStatusLabel.text = str(error)
                return
            self._uncertaintyNode = self.logic.run_outputs(segmentationNode).get("uncertainty")
            if self._uncertaintyNode is not None:
                threshold = self.logic.uncertainty_threshold(self._uncertaintyNode)
                self.ui.uncertaintyThresholdSlider.blockSignals(True)
                self.ui.uncertaintyThresholdSlider.value = threshold if threshold is not None else 0.0
                self.ui.uncertaintyThresholdSlider.blockSignals(False)
            self.addObserver(segmentationNode.GetSegmentation(), slicer.vtkSegmentation.RepresentationModified,
                             self._onSegmentationEdited)
            self._showReviewTable()

        def _stopReview(self):
            if self._review is not None:
                self.removeObserver(self._review.segmentation.GetSegmentation(),
                                    slicer.vtkSegmentation.RepresentationModified, self._onSegmentationEdited)
            self._review, self._uncertaintyNode = None, None
            self._updateReviewState()

        def _showReviewTable(self):
            rows = table_rows(self._review.regions)
            self.ui.reviewTable.setRowCount(len(rows))
            for row, cells in enumerate(rows):
                for column, text in enumerate(cells):
                    self.ui.reviewTable.setItem(row, column, qt.QTableWidgetItem(text))
            self._updateReviewState()

        def _updateReviewState(self):
            active = self._review is not None
            for widget in (self.ui.nextRegionButton, self.ui.previousRegionButton, self.ui.exportReviewButton,
                           self.ui.saveSegmentationButton):
                widget.enabled = active
            self.ui.uncertaintyThresholdSlider.enabled = self._uncertaintyNode is not None
            current = self._review.current if active else None
            self.ui.reviewedCheckBox.enabled = current is not None
            self.ui.reviewedCheckBox.blockSignals(True)
            self.ui.reviewedCheckBox.checked = current is not None and self._review.regions[current]["reviewed"]
            self.ui.reviewedCheckBox.blockSignals(False)
            if active:
                self.ui.reviewStatusLabel.text = counts_text(*self._review.counts())

        def _goTo(self, region):
            if region is None:
                return
            self.ui.reviewTable.selectRow(self._review.current)
            if region["segment_id"]:
                editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
                editor.setSegmentationNode(self._review.segmentation)
                editor.setCurrentSegmentID(region["segment_id"])
            self._updateReviewState()

        def onReviewRowClicked(self, row, column):
            self._goTo(self._review.go_to(row))

        def onNextRegion(self):
            self._goTo(self._review.next())

        def onPreviousRegion(self):
            self._goTo(self._review.previous())

        def onReviewedToggled(self, checked):
            if self._review is None or self._review.current is None:
                return
            self._review.set_reviewed(checked)
            self.ui.reviewTable.setItem(self._review.current, 4, qt.QTableWidgetItem(
                table_rows(self._review.regions)[self._review.current][4]))
            self._updateReviewState()

        def onThresholdChanged(self, value):
            if self._uncertaintyNode is not None:
                self.logic.set_uncertainty_threshold(self._uncertaintyNode, value)

        def _onSegmentationEdited(self, caller=None, event=None):
            self._volumeTimer.start()

        def _refreshVolumes(self):
            if self._review is not None:
                self._showReport({"volumes_ml": self._review.volumes_ml()}, volumesOnly=True)

        def _askFolder(self, title):
            return qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), title)

        def onExportReview(self):
            self._writeFiles(self._askFolder("Export the review into"), self._review.export,
                             self._review.export_names(), "Review exported")

        def onSaveSegmentation(self):
            self._writeFiles(self._askFolder("Save the segmentation into"), self._review.save_segmentation,
                             self._review.segmentation_names(), "Segmentation saved")

        def _writeFiles(self, folder, write, names, done):
            if not folder:
                return
            existing = existing_files(folder, names)
            if existing and not slicer.util.confirmOkCancelDisplay("Replace " + ", ".join(existing) + "?"):
                return
            try:
                paths = write(folder, overwrite=bool(existing))
            except InputError as error:
                slicer.util.errorDisplay(str(error))
                return
            self.ui.reviewStatusLabel.text = f"{done}: " + ", ".join(str(path) for path in paths)

else:
    DareFuseSlicerLogic = DareFuseLogic


_TestBase = ScriptedLoadableModuleTest if IN_SLICER_APP else unittest.TestCase


class DareFuseSlicerTest(_TestBase):
    """Self-test on the bundled sample case: in Slicer (Reload and Test, CI under xvfb) and headless (pytest).

    It needs torch and the packages of Resources/requirements.txt (for the inference process). In the GUI it
    offers to install what is missing, as Apply does; where nothing may be installed (testing mode, the
    Extensions build machines) it is skipped with one message naming what is missing, unless
    DAREFUSE_SELFTEST_REQUIRE_PACKAGES is set (CI installs them first), which makes that a failure.
    """

    def setUp(self):
        if IN_SLICER_APP:
            slicer.mrmlScene.Clear()
            self.scene = slicer.mrmlScene
        else:
            from DareFuseSlicerLib.scene import files

            self.scene = files.new_scene()

    def runTest(self):
        self.setUp()
        try:
            self.test_sample_case()
        except unittest.SkipTest as skipped:  # Reload and Test calls runTest itself: say why, do not fail
            self._say(f"DareFuseSlicer self-test skipped: {skipped}")

    def _requirePackages(self):
        if IN_SLICER_APP:
            missing = installPythonPackages(interactive=not slicer.app.testingEnabled())
        else:
            missing = missingPackages()
            missing = ("DareFuseSlicer needs Python packages that are not installed: " + ", ".join(missing)) \
                if missing else ""
        if missing and os.environ.get(REQUIRE_PACKAGES_VARIABLE):
            self.fail(missing)
        if missing:
            self.skipTest(missing)

    def _say(self, message):
        if IN_SLICER_APP:
            self.delayDisplay(message)
        else:
            logging.info(message)

    def test_sample_case(self):
        import SimpleITK as sitk
        from DareFuseSlicerLib.constants import REGIONS
        from DareFuseSlicerLib.metrics import region_dice
        from DareFuseSlicerLib.sampledata import sample_case_paths
        from DareFuseSlicerLib.scene import nodes, segmentation, volumes

        self._requirePackages()
        self._say("Loading the sample case")
        paths = sample_case_paths()  # raises if a file does not match its SHA256
        loaded = load_sample_case(self.scene, paths)
        inputs = auto_assign_inputs(self.scene)
        self.assertEqual(inputs, loaded)

        self._say("Running DARE-FUSE on the CPU")
        fractions = []
        outputs = DareFuseSlicerLogic().process(**inputs, device="cpu",
                                                progress=lambda fraction, message: fractions.append(fraction))
        self.assertAlmostEqual(fractions[-1], 1.0)

        seg = outputs.segmentation
        names = [seg.GetSegmentation().GetNthSegment(i).GetName()
                 for i in range(seg.GetSegmentation().GetNumberOfSegments())]
        self.assertEqual(names, ["NETC", "SNFH", "ET"])
        self.assertIs(seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole()), inputs["t1"])

        truth = sitk.ReadImage(str(paths["seg"]))
        predicted = segmentation.labels_array(seg, truth)
        expected = sitk.GetArrayFromImage(truth)
        scores = dict(zip(REGIONS, region_dice(predicted, expected)))
        self._say("Dice on the sample case: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
        self.assertGreaterEqual(scores["WT"], SAMPLE_WT_DICE_MINIMUM)

        uncertainty = volumes.volume_array(outputs.nodes["uncertainty"])
        self.assertGreaterEqual(float(uncertainty.min()), 0.0)
        self.assertLessEqual(float(uncertainty.max()), 1.0)
        for kind in ("difference_prior", "gradcam", "tumour_free_t1"):
            self.assertIn(kind, outputs.nodes)

        report = report_of(seg)
        self.assertEqual(set(report["volumes_ml"]), {"NETC", "SNFH", "ET", "WT", "TC"})
        self.assertAlmostEqual(sum(report["class_probabilities"].values()), 1.0, places=3)

        self._say("Checking the display")
        # The uncertainty's own colour table: transparent below the model card's threshold, so only doubt shows.
        uncertainty_display = outputs.nodes["uncertainty"].GetDisplayNode()
        self.assertIs(uncertainty_display.GetColorNode(), outputs.nodes["uncertainty_colours"])
        self.assertTrue(uncertainty_display.GetApplyThreshold())
        self.assertAlmostEqual(uncertainty_display.GetLowerThreshold(),
                               report["settings"]["review"]["overlay_threshold"])
        self.assertTrue(seg.GetDisplayNode().GetVisibility2DOutline())
        if IN_SLICER_APP and slicer.app.layoutManager() is None:
            # --no-main-window: no layout manager, so no slice views and no slice composite nodes to check.
            self._say("No slice views (started without the main window): view checks skipped")
        else:
            composite = self.scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
            self.assertIsNotNone(composite)
            self.assertEqual(composite.GetBackgroundVolumeID(), inputs["flair"].GetID())
            self.assertEqual(composite.GetForegroundVolumeID(), outputs.nodes["uncertainty"].GetID())

        self._say("Checking the review regions")
        review = DareFuseSlicerLogic().start_review(seg)
        self.assertEqual(len(review.regions), len(report["review_regions"]))
        self.assertGreater(len(review.regions), 0)  # a glioma: its edge is in doubt somewhere
        first = review.next()
        red = self.scene.GetNodeByID("vtkMRMLSliceNodeRed").GetSliceToRAS()
        self.assertAlmostEqual(red.GetElement(2, 3), first["centre_ras"][2], places=1)  # the axial view moved there
        review.set_reviewed()
        self.assertEqual(review.counts(), (1, len(review.regions) - 1))

        self._say("Running again: the earlier outputs are replaced")
        count = self.scene.GetNumberOfNodes()
        again = DareFuseSlicerLogic().process(**inputs, outputs=("segmentation", "uncertainty", "prior", "gradcam"))
        self.assertEqual(self.scene.GetNumberOfNodes(), count)
        self.assertIsNone(seg.GetScene())
        self.assertTrue(all(nodes.is_output(node) for node in again.nodes.values()))
        self._say("Test passed")
