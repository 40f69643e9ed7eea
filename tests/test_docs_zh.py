"""README.zh-CN.md stays true to the code and to the English documents.

The Chinese README is a translation for mini-program developers and operators;
README.md (English) is the reference. These checks need no database: they read
the documents, ``shared.config.SETTINGS`` and the tree.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.config import PROJECT_ROOT, SETTINGS

ZH = PROJECT_ROOT / "README.zh-CN.md"
EN = PROJECT_ROOT / "README.md"
API = PROJECT_ROOT / "docs" / "API.md"

# Paths written in the Chinese README that another change adds (the mini-program client library).
CLIENT_PREFIX = "clients/miniprogram/"
# Environment variables that are not gateway settings and that README.md / docs/API.md do not name:
# pip's own index setting, mentioned for downloads from inside China.
EXTERNAL_VARIABLES = {"PIP_INDEX_URL"}


def _read(path) -> str:
    return path.read_text(encoding="utf-8")


def _section(text: str, heading: str) -> str:
    """The body of a level-2 section, up to the next level-2 heading."""
    assert f"\n## {heading}\n" in text, f"no '## {heading}' section"
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def _fenced_blocks(text: str) -> list[str]:
    return re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)


def _inline_code(text: str) -> list[str]:
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.M | re.S)
    return re.findall(r"(?<!`)`([^`\n]+)`(?!`)", prose)


def _code(text: str) -> list[str]:
    """Everything written as code: inline spans and fenced blocks."""
    return _inline_code(text) + _fenced_blocks(text)


def _table_rows(section: str) -> list[list[str]]:
    rows = []
    for line in section.splitlines():
        if line.startswith("|") and not re.match(r"^\|\s*-", line):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _config_table(text: str, heading: str) -> dict[str, list[str]]:
    """variable -> its row's cells, from the settings table of a section."""
    rows = {}
    for cells in _table_rows(_section(text, heading)):
        m = re.fullmatch(r"`([A-Z0-9_]+)`", cells[0])
        if m and len(cells) == 3:
            assert m.group(1) not in rows, f"{m.group(1)} is listed twice"
            rows[m.group(1)] = cells
    return rows


def _api_error_table() -> dict[str, set[str]]:
    """code -> its statuses, from docs/API.md's error table."""
    codes = {}
    for cells in _table_rows(_section(_read(API), "Errors")):
        if re.fullmatch(r"\d{3}(/\d{3})*", cells[0]):
            for code in re.findall(r"`([a-z_]+)`", cells[1]):
                codes.setdefault(code, set()).update(cells[0].split("/"))  # content_rejected: 409 and 422
    assert len(codes) > 10, "could not read docs/API.md's error table"
    return codes


def _zh_error_table() -> dict[str, str]:
    """code -> status, from the Chinese README's error table."""
    codes = {}
    for cells in _table_rows(_section(_read(ZH), "错误码")):
        if re.fullmatch(r"\d{3}", cells[0]):
            m = re.fullmatch(r"`([a-z_]+)`", cells[1])
            assert m, f"error row without a code: {cells}"
            assert m.group(1) not in codes, f"{m.group(1)} is listed twice"
            codes[m.group(1)] = cells[0]
    return codes


def _path_like(token: str) -> bool:
    """A relative repo path: only path characters, a slash, and an extension or a trailing slash."""
    if not re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_./-]*", token) or "/" not in token:
        return False
    return token.endswith("/") or re.search(r"\.[A-Za-z0-9]+$", token.rsplit("/", 1)[1]) is not None


def _mentioned_paths() -> set[str]:
    paths = set()
    for code in _code(_read(ZH)):
        for token in code.split():
            token = token.strip("\"'()[],;:")
            if _path_like(token):
                paths.add(token)
    # Markdown links to files of the repository, e.g. [README.md](README.md).
    for target in re.findall(r"\]\(([^)\s]+)\)", _read(ZH)):
        if "://" not in target and not target.startswith("#"):
            paths.add(target.split("#", 1)[0])
    return paths


def _generated_dirs() -> tuple[str, ...]:
    """Folders the commands create and git ignores (.state/, build/...): named, never committed."""
    lines = _read(PROJECT_ROOT / ".gitignore").splitlines()
    return tuple(line.strip() for line in lines if line.strip().endswith("/") and not line.startswith("#"))


def _made_by_a_command(path: str) -> bool:
    """A file the doc tells the reader to create (`cp … path`) in a folder whose .gitignore lists it."""
    ignore = PROJECT_ROOT / Path(path).parent / ".gitignore"
    return ignore.exists() and Path(path).name in ignore.read_text(encoding="utf-8").split() \
        and re.search(rf"cp \S+ {re.escape(path)}", _read(ZH)) is not None


def _missing(paths) -> list[str]:
    missing = []
    for p in sorted(paths):
        target = PROJECT_ROOT / p
        ok = target.is_dir() if p.endswith("/") else target.exists()
        if not ok and not p.startswith(_generated_dirs()) and not _made_by_a_command(p):
            missing.append(p)
    return missing


def test_links_back_to_the_english_readme_first():
    head = "\n".join(_read(ZH).splitlines()[:5])
    assert "](README.md)" in head and "为准" in head


def test_config_table_lists_exactly_the_settings():
    zh = _config_table(_read(ZH), "配置")
    en = _config_table(_read(EN), "Configuration")
    assert set(zh) == {s.env for s in SETTINGS}
    assert set(zh) == set(en)
    # In the order of SETTINGS, like the English table.
    assert list(zh) == [s.env for s in SETTINGS]


def test_config_defaults_match_the_english_table():
    zh = _config_table(_read(ZH), "配置")
    en = _config_table(_read(EN), "Configuration")
    different = {name: (zh[name][1], en[name][1]) for name in zh if name in en and zh[name][1] != en[name][1]}
    assert not different


def test_config_meanings_are_in_chinese():
    zh = _config_table(_read(ZH), "配置")
    untranslated = [name for name, cells in zh.items() if not re.search(r"[\u4e00-\u9fff]", cells[2])]
    assert not untranslated


def test_every_error_code_of_the_contract_is_in_the_table():
    api = _api_error_table()
    zh = _zh_error_table()
    assert set(api) - set(zh) == set()
    wrong_status = {code: (zh[code], sorted(api[code])) for code in api if zh[code] not in api[code]}
    assert not wrong_status


def test_error_table_names_only_codes_the_documents_define():
    documented = set(re.findall(r"`([a-z_]+)`", _read(API) + _read(EN)))
    assert set(_zh_error_table()) - documented == set()


def test_job_error_codes_are_explained():
    line = next(l for l in _read(API).splitlines() if l.startswith("- `error` (only when `failed`)"))
    job_codes = set(re.findall(r'"([a-z_]+)"', line.split('"code":', 1)[1].split('"message"', 1)[0]))
    assert job_codes == {"execution_error", "backend_lost", "timeout", "output_copy_failed", "content_rejected"}
    listed = set(re.findall(r"^\| `([a-z_]+)` \|", _section(_read(ZH), "错误码"), flags=re.M))
    assert job_codes <= listed


def test_repo_paths_exist():
    paths = {p for p in _mentioned_paths() if not p.startswith(CLIENT_PREFIX)}
    assert "deploy/nginx.conf" in paths and "scripts/dev.sh" in paths  # the scan does find paths
    assert _missing(paths) == []


def test_miniprogram_client_paths_exist():
    """The client library and its example (written in another change) are where the README says."""
    paths = {p for p in _mentioned_paths() if p.startswith(CLIENT_PREFIX)}
    assert {"clients/miniprogram/index.js", "clients/miniprogram/example/"} <= paths
    assert _missing(paths) == []


def test_variables_named_exist():
    known = ({s.env for s in SETTINGS} | EXTERNAL_VARIABLES
             | set(re.findall(r"\b[A-Z][A-Z0-9]*_[A-Z0-9_]+\b", _read(EN) + _read(API))))
    named = set()
    for code in _inline_code(_read(ZH)):
        m = re.fullmatch(r"([A-Z][A-Z0-9]*_[A-Z0-9_]+)(=\S*)?", code)
        if m:
            named.add(m.group(1))
    for block in _fenced_blocks(_read(ZH)):
        named |= set(re.findall(r"(?:^|\s|export )([A-Z][A-Z0-9]*_[A-Z0-9_]+)=", block, flags=re.M))
    assert "TRUSTED_PROXIES" in named and "S3_ADDRESSING_STYLE" in named
    assert named - known == set()


def test_gateway_commands_and_options_exist():
    en = _read(EN)
    subcommands = set(re.findall(r"^\| `gateway ([a-z]+)", _section(en, "The `gateway` command"), flags=re.M))
    assert {"serve", "listen", "migrate", "dev"} <= subcommands
    sources = en + "".join(_read(p) for p in [PROJECT_ROOT / "shared" / "cli.py",
                                                PROJECT_ROOT / "shared" / "pool" / "admin.py",
                                                *sorted((PROJECT_ROOT / "scripts").glob("*.sh"))])
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", sources))
    used_subcommands, used_options = set(), set()
    for code in _code(_read(ZH)):
        used_subcommands |= set(re.findall(r"\bgateway ([a-z]+)", code))
        used_options |= set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", code))
    assert used_subcommands - subcommands == set()
    assert used_options - options == set()


def test_endpoints_exist():
    def endpoints(text):
        return {(m, p.split("?", 1)[0].rstrip(".,;")) for m, p in
                re.findall(r"\b(GET|POST|PUT|PATCH|DELETE) (/[A-Za-z0-9_./{}?=&-]*)", text)}
    known = endpoints(_read(EN) + _read(API))
    used = endpoints(_read(ZH))
    assert ("POST", "/v1/auth/wechat") in used
    assert used - known == set()


def test_quick_start_matches_the_english_readme():
    en, zh = _read(EN), _read(ZH)
    walkthrough = _fenced_blocks(en.split("Try it (with", 1)[1])[0]
    start = _section(zh, "快速开始")
    assert walkthrough in start
    assert "bash scripts/dev.sh --fake-comfyui" in start and "bash scripts/test.sh" in start


@pytest.mark.parametrize("section", ["快速开始", "小程序接入步骤", "错误码", "轮询", "部署到腾讯云", "配置"])
def test_sections_are_present(section):
    assert _section(_read(ZH), section).strip()
