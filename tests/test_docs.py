"""Every repository path that README.md and docs/*.md name exists in the source tree.

Paths count where they are written in backticks (inline or fenced) or as markdown link targets and start with
one of the repository's top-level folders. A path must resolve without passing through a symlink, so the
git-ignored ``vim/kernels`` link of a development checkout does not make ``vim/kernels/...`` pass."""
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
REPO_PATH = re.compile(r'(?<![\w./$-])((?:bench|kernels|vim|tools|configs|docs|tests)/[\w./*-]*)')
CODE = re.compile(r'(`+)(.+?)\1', re.S)
LINK = re.compile(r'\]\(([^)\s]+)\)')


def _in_tree(path: Path) -> bool:
    plain = Path(os.path.normpath(path))
    return plain.exists() and plain.resolve() == plain


def named_paths(doc: Path):
    """(path as written, resolved path) for every repository path ``doc`` names."""
    text = doc.read_text()
    for match in CODE.finditer(text):
        for path in REPO_PATH.findall(match.group(2)):
            path = path.rstrip('.')
            yield path, ROOT / path
    for target in LINK.findall(text):
        target = target.split('#')[0]
        if target and '://' not in target and not target.startswith('mailto:'):
            yield target, doc.parent / target


@pytest.mark.parametrize('doc', DOCS, ids=lambda d: d.name)
def test_named_paths_exist(doc):
    missing = [written for written, path in named_paths(doc)
               if not (any(path.parent.glob(path.name)) if '*' in path.name else _in_tree(path))]
    assert not missing, f'{doc.relative_to(ROOT)} names paths that are not in the repository: {missing}'


def test_the_check_sees_paths_and_rejects_missing_ones(tmp_path):
    doc = tmp_path / 'x.md'
    doc.write_text('Run `python bench/model_throughput.py` and see [the notes](missing.md).\n'
                   '```bash\nls kernels/reference.py vim/kernels/reference.py\n```\n')
    found = dict(named_paths(doc))
    assert set(found) == {'bench/model_throughput.py', 'missing.md', 'kernels/reference.py',
                          'vim/kernels/reference.py'}
    assert _in_tree(found['bench/model_throughput.py']) and _in_tree(found['kernels/reference.py'])
    assert not _in_tree(found['missing.md']) and not _in_tree(found['vim/kernels/reference.py'])
