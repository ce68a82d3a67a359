"""Renders the Helm chart offline with the Helm SDK (PyPI helm-python-sdk, no helm binary,
no cluster) and writes each manifest to its own file, for tests/helm.rs.

Usage: render.py CHART OUT_DIR VALUES_JSON
Prints one JSON object: {"files": [...]} on success, {"error": "..."} (exit 1) when the chart
refuses the values.
"""
import json
import os
import sys

import helm_python as helm


def main() -> int:
    chart_dir, out_dir, values = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    chart = helm.Chart.load(chart_dir)
    try:
        rendered = chart.render(values, name="tg", namespace="tollgate", is_install=True)
    except helm.HelmError as e:
        print(json.dumps({"error": str(e)}))
        return 1
    os.makedirs(out_dir, exist_ok=True)
    files = []
    for template, text in sorted(rendered.items()):
        for i, doc in enumerate(text.split("\n---")):
            if not doc.strip() or all(l.startswith("#") or not l.strip() for l in doc.splitlines()):
                continue
            name = os.path.join(out_dir, f"{os.path.basename(template)}.{i}.yaml")
            with open(name, "w") as f:
                f.write(doc.lstrip("-\n") + "\n")
            files.append(name)
    print(json.dumps({"files": files}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
