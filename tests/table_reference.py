"""The /images table built row by row, as the store's code did before it worked on columns: the
independent reference for ``store.write.images_columns`` and the tables made from it.

Rows are (path, sha256, key, status, width, height[, label[, (size, mtime_ns, ctime_ns)]]);
status None marks a used content: the first path of each content is "ok", the rest "duplicate".
"""
from __future__ import annotations

import numpy as np


def images_table_of_rows(rows: list[tuple]) -> dict[str, np.ndarray]:
    first: dict[int, int] = {}
    status = [r[3] if r[3] is not None else ("ok" if first.setdefault(r[2], i) == i else "duplicate")
              for i, r in enumerate(rows)]
    labels = [r[6] if len(r) > 6 else None for r in rows]
    meta = np.array([r[7] if len(r) > 7 and r[7] is not None else (-1, -1, -1) for r in rows],
                    dtype=np.int64).reshape(len(rows), 3)
    return {
        "path": np.array([r[0] for r in rows], dtype=object),
        "sha256": np.array([r[1] for r in rows], dtype=object),
        "key": np.array([r[2] for r in rows], dtype=np.int64),
        "status": np.array(status, dtype=object),
        "width": np.array([r[4] for r in rows], dtype=np.int32),
        "height": np.array([r[5] for r in rows], dtype=np.int32),
        **({"label": np.array(["" if v is None else v for v in labels], dtype=object)}
           if any(v is not None for v in labels) else {}),
        "size": meta[:, 0], "mtime_ns": meta[:, 1], "ctime_ns": meta[:, 2],
    }
