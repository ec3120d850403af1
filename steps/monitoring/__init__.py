"""monitor's library: served rows judged against the champion's reference (``drift``),
live accuracy from feedback (``live``), the report (``report``) and reading the inference
log, its feedback and batch files (``sources``)."""
