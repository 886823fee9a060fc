"""The embedded sample in `data/sample/` of a repository checkout: the data every command runs on by default.

`data/sample/metadata.csv` lists every file of the sample, one row per image (columns `file`, `source`, `patient`,
`license`, `label`, `sex`, `age`, `lung_mask`, `report`, `report_source`; `data/sample/ATTRIBUTION.md` states their
sources and licences). A package installed without the checkout (a wheel) has no sample: `require` turns a default
that points into it into a `UserError` naming the option to pass instead.
"""

from pathlib import Path

from rad_dino_hf.errors import UserError

REPO = Path(__file__).resolve().parents[1]  # the checkout: the parent of the package folder
SAMPLE_DIR = REPO / "data" / "sample"
TABLE = SAMPLE_DIR / "metadata.csv"
IMAGES = SAMPLE_DIR / "images"
DICOM = SAMPLE_DIR / "dicom" / "RG1_UNCR.dcm"
QUERY_IMAGE = IMAGES / "IM-0115-0001.jpg"  # the table's first row: a pediatric radiograph labelled normal
REPORT_COLUMN = "report"  # findings text: a template from the label, or case-report notes (see `report_source`)


def require(path: str | Path, option: str) -> str:
    """`path` as given; when it points into the embedded sample and is not there, a `UserError` naming it and the
    `option` that passes other data."""
    resolved = Path(path).resolve()
    if resolved.is_relative_to(SAMPLE_DIR) and not resolved.exists():
        raise UserError(
            f"The embedded sample {resolved} is not here (it comes with a clone of the repository, not with an "
            f"installed package): pass {option} with your data"
        )
    return str(path)
