"""Ledger -> terminal table, markdown, HTML."""

# table.py     the stage table (rich, markdown)
# figures.py   the data behind every figure, and the plotly figures
# html.py      build_report: one self-contained offline HTML file; load_run; profile_stages
# markdown.py  build_markdown: the report for READMEs, with PNG figures
# png.py       export_pngs: each figure as a PNG (matplotlib, no browser)
# Nothing is imported here, so `import edgeopt.report` stays light.
