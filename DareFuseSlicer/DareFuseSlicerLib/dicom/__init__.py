"""DICOM in and out, without torch or Slicer: series folders -> SimpleITK images, results -> DICOM SEG and
Parametric Maps, and synthetic DICOM studies from the data engine's cases.

    series.py     find the series in a folder, check them, sort their slices in space, read them
    assign.py     which series is which contrast, from SeriesDescription / ProtocolName
    export.py     DICOM SEG (NETC, SNFH, ET) and Parametric Maps with highdicom
    synthetic.py  a data-engine case as a DICOM study (one series per contrast, one study)
    privacy.py    the patient attributes that never go into a message, a log or report.json
"""
