"""The stage registry's contents: importing this package registers every built-in stage."""

import curate.stages.codec  # noqa: F401
import curate.stages.concepts  # noqa: F401
import curate.stages.dedup  # noqa: F401
import curate.stages.filters  # noqa: F401
import curate.stages.images  # noqa: F401
import curate.stages.ocr  # noqa: F401
import curate.stages.video  # noqa: F401
