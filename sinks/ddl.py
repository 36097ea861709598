"""Reading the DDL files of schemas/sql: shared by the audit store and the Merkle tables."""

from __future__ import annotations


def split_statements(sql: str) -> list[str]:
    """Split a DDL file on `;` at line ends, dropping comment-only pieces."""
    statements = []
    for piece in sql.split(";\n"):
        lines = [line for line in piece.strip().splitlines() if not line.strip().startswith("--")]
        text = "\n".join(lines).strip().rstrip(";")
        if text:
            statements.append(text)
    return statements
