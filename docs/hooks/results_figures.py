"""MkDocs hook: publish the figures of benchmarks/results/ beside the pages that include the result files.

The result files (benchmarks/results/*.md) are included into docs/results.md as they are, and they link their figures
by bare name (`quality_bbc.png`), relative to where they live. This hook adds each figure to the site under that name,
next to results.md, so the links resolve without a copy of the figures in docs/.
"""

from pathlib import Path

from mkdocs.structure.files import File

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
FIGURES = ("*.png", "*.svg")


def on_files(files, config):
    for pattern in FIGURES:
        for figure in sorted(RESULTS.glob(pattern)):
            files.append(File.generated(config, figure.name, abs_src_path=str(figure)))
    return files
