"""Rebuild offline.html: DVC's plot page with vega, vega-lite and vega-embed inlined.

DVC's own page loads the three libraries from a CDN, so `dvc plots show/diff` pages are blank
offline and on locked-down GPU boxes. `.dvc/config` points `plots.html_template` at the page
this script writes; inlining (rather than linking files beside it) keeps a page written with
`-o ANYWHERE` working. Run it only to change a pinned version:

    python .dvc/plots/vendor_vega.py      # needs npm and the npm registry

Licences are copied to licenses/. vega's npm package ships no LICENSE file (its package.json
declares BSD-3-Clause), so licenses/vega-LICENSE holds the text from the vega repository.
"""

from __future__ import annotations

import subprocess
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PINNED = {"vega": "5.33.1", "vega-lite": "5.23.0", "vega-embed": "6.29.0"}

PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{refresh_tag}
<title>mobitune plots</title>
<!-- {versions}: inlined by .dvc/plots/vendor_vega.py, licences in .dvc/plots/licenses/ -->
{libraries}
<script>
// DVC's plot divs call vegaEmbed(element, spec): keep the export menu, drop the online-editor link.
window.vegaEmbed = ((embed) => (element, spec, options) =>
  embed(element, spec, {{actions: {{export: true, source: true, compiled: false, editor: false}}, ...options}})
)(window.vegaEmbed);
</script>
<style>
body {{ font-family: sans-serif; margin: 16px; }}
body > div {{ display: inline-block; vertical-align: top; margin: 0 24px 24px 0; }}
</style>
</head>
<body>
{plot_divs}
</body>
</html>
"""


def main() -> None:
    libraries = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, version in PINNED.items():
            subprocess.run(["npm", "pack", "--silent", f"{name}@{version}"], cwd=scratch, check=True, capture_output=True)
            with tarfile.open(Path(scratch) / f"{name}-{version}.tgz") as archive:
                bundle = archive.extractfile(f"package/build/{name}.min.js").read().decode()
                if "</script" in bundle:
                    raise SystemExit(f"{name}@{version}: its bundle contains '</script' and cannot be inlined")
                libraries.append(f"<script>/* {name}@{version} */\n{bundle}\n</script>")
                if "package/LICENSE" in archive.getnames():
                    (HERE / "licenses" / f"{name}-LICENSE").write_bytes(archive.extractfile("package/LICENSE").read())
    versions = ", ".join(f"{name} {version}" for name, version in PINNED.items())
    page = PAGE.format(versions=versions, libraries="\n".join(libraries), refresh_tag="{refresh_tag}", plot_divs="{plot_divs}")
    (HERE / "offline.html").write_text(page)


if __name__ == "__main__":
    main()
