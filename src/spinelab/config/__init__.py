"""Validated experiment configs: pydantic schemas with every default, YAML loading and dotted overrides."""
