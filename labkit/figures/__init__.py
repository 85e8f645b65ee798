"""plotly figures, one module per chapter. Needs the ``lab`` extras (plotly)."""
