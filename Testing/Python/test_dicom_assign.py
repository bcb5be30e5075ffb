"""Series to contrasts by SeriesDescription / ProtocolName with the module's one name rule; what became of every
series is reported; ambiguity is an error that lists the candidates."""
import pytest

from DareFuseSlicerLib.constants import contrast_of_name
from DareFuseSlicerLib.dicom import assign, series, synthetic
from DareFuseSlicerLib.errors import InputError
from dicom_helpers import CASE_ID, SEED, edit, files, small_image, study, write_series


@pytest.mark.parametrize("description, contrast", [
    # What scanners write (Siemens, GE, Philips habits), and the synthetic studies' own descriptions.
    ("T1 MPRAGE", "t1"), ("T1 MPRAGE post Gd", "t1ce"), ("T2 TSE ax", "t2"), ("FLAIR ax", "flair"),
    ("t1_mprage_sag_p2_iso", "t1"), ("t1_mprage_sag_p2_iso_post", "t1ce"), ("AX T1 POST GAD", "t1ce"),
    ("Ax T1 FSPGR +C", "t1ce"), ("T1 SE tra KM", "t1ce"), ("T1 pre Gd", "t1"), ("T1W_3D_TFE", "t1"),
    ("t2_tse_tra_512", "t2"), ("T2W_TSE", "t2"), ("t2_tirm_tra_dark-fluid", "flair"), ("AX T2 FLAIR", "flair"),
    ("T2 dark fluid", "flair"), ("localizer", None), ("AAHead_Scout", None), ("ep2d_diff_3scan_trace", None),
    ("ADC", None), ("t2_swi_tra", None), ("T1 DCE perfusion", None), ("T2 star", None),
])
def test_scanner_descriptions(description, contrast):
    assert contrast_of_name(description)[0] == contrast


def test_series_of_one_contrast_share_the_stem():
    assert contrast_of_name("T1 MPRAGE")[1] == contrast_of_name("T1 MPRAGE post Gd")[1] == "mprage"


@pytest.fixture
def study_folder(tmp_path):
    images = {c: small_image(seed=i) for i, c in enumerate(("t1", "t1ce", "t2", "flair"))}
    synthetic.write_study(images, tmp_path / "study", CASE_ID, SEED)
    return tmp_path / "study"


def test_a_study_is_assigned_and_every_series_reported(study_folder):
    found = series.discover(study_folder, "--dicom x")
    chosen, notes = assign.assign(found, "--dicom x")
    assert {c: s.description for c, s in chosen.items()} == {
        "t1": "T1 MPRAGE", "t1ce": "T1 MPRAGE post Gd", "t2": "T2 TSE ax", "flair": "FLAIR ax"}
    assert [n.split("', ")[0].split("('")[1] + " -> " + n.split(": ")[-1] for n in notes] == [
        "localizer -> left aside (localizer)", "T1 MPRAGE -> T1", "T1 MPRAGE post Gd -> T1ce", "T2 TSE ax -> T2",
        "FLAIR ax -> FLAIR"]


def test_an_original_wins_over_its_reformat_and_given_contrasts_are_skipped(study_folder):
    reformat = write_series(small_image(seed=9), study_folder / "07_mpr", "t1", number=7)
    for path in files(reformat):
        edit(path, SeriesDescription="T1 MPRAGE cor MPR", ImageType=["DERIVED", "SECONDARY", "MPR"])
    write_series(small_image(seed=8), study_folder / "08_dwi", "t2", number=8)
    for path in files(study_folder / "08_dwi"):
        edit(path, SeriesDescription="ep2d_diff_3scan_trace", ProtocolName="ep2d_diff")
    chosen, notes = assign.assign(series.discover(study_folder, "--dicom x"), "--dicom x", skip=("flair",))
    assert chosen["t1"].description == "T1 MPRAGE" and "flair" not in chosen
    assert any("T1 MPRAGE cor MPR" in n and n.endswith("left aside (another T1 series)") for n in notes)
    assert any("ep2d_diff_3scan_trace" in n and "names none of" in n for n in notes)
    assert any("FLAIR ax" in n and "FLAIR was given on its own" in n for n in notes)


def test_two_originals_of_one_contrast_are_an_error_listing_them(study_folder):
    write_series(small_image(seed=7), study_folder / "09_t2_repeat", "t2", number=9)
    with pytest.raises(InputError) as caught:
        assign.assign(series.discover(study_folder, "--dicom x"), "--dicom x")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("--dicom x: the folder holds 2 series that look like T2")
    assert message.count("('T2 TSE ax', 18 images)") == 2 and message.endswith("Pick one by its UID (series).")
    assert caught.value.naming(lambda option: "--" + option).endswith("Pick one by its UID (--series).")
    first = message.split(": ")[2].split(" (")[0]
    chosen, _ = assign.assign(series.discover(study_folder, "--dicom x"), "--dicom x", wanted=[first])
    assert chosen["t2"].uid == first


def test_a_study_without_any_of_the_four(tmp_path):
    folder = synthetic.write_localizer(small_image(), tmp_path / "loc", study(), 1, "1.2.3")
    with pytest.raises(InputError, match="none of the folder's 1 series has a description naming"):
        assign.assign(series.discover(folder, "--dicom x"), "--dicom x")
