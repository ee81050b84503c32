"""Core logic of ccache-cli: no Typer, no rich. Functions return frozen dataclasses
and raise CcacheError subclasses."""
