"""The two RSNA pipelines, each a set of ``Stage`` subclasses plus its glue."""
