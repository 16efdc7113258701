"""Data loading: read SFT and preference rows from files or the hub, check them, mix them into datasets."""

from align.data.load import LoadReport, SourceReport, StageDatasets, load_stage
from align.data.spec import DataSource, StageData

__all__ = ["DataSource", "LoadReport", "SourceReport", "StageData", "StageDatasets", "load_stage"]
