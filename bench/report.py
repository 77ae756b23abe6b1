"""Markdown result tables of the benchmark scripts: each row printed as it is measured, the whole table
printed and saved at the end."""
from typing import List, Optional


def emit(lines: List[str], line: str) -> None:
    lines.append(line)
    print(line, flush=True)


def finish(lines: List[str], out: Optional[str]) -> None:
    text = '\n'.join(lines)
    print(text)
    if out:
        with open(out, 'w') as f:
            f.write(text + '\n')
