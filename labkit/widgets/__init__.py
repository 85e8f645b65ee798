"""ipywidgets panels, one module per chapter. Needs the ``lab`` extras (ipywidgets, plotly)."""
