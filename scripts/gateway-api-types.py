"""Post-processes kopium output (stdin → stdout) for parapet-crds:
the CustomResource derive, kube attributes and status types only with feature `kube`."""
import re
import sys

src = sys.stdin.read()
# Paths in the header differ between machines; keep only the file name.
src = re.sub(r"-f \S*/(gateway\.networking\.k8s\.io_\w+\.yaml)", r"-f \1", src)
src = src.replace(
    "    pub use kube::CustomResource;\n",
    "    #[cfg(feature = \"kube\")]\n    pub use kube::CustomResource;\n",
)
src = src.replace(
    "    pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;\n",
    "    #[cfg(feature = \"kube\")]\n    pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;\n",
)
src = src.replace("#[derive(CustomResource, ", "#[cfg_attr(feature = \"kube\", derive(CustomResource))]\n#[derive(")
src = re.sub(r"^#\[kube\((.*)\)\]$", r'#[cfg_attr(feature = "kube", kube(\1))]', src, flags=re.M)
# Status types (`<Kind>Status…`) hold k8s-openapi Conditions: kube builds only.
kinds = re.findall(r'kind = "(\w+)"', src)
roots = set()
for m in re.finditer(r'root = "(\w+)"', src):
    roots.add(m.group(1))
prefixes = tuple(r + "Status" for r in roots | set(kinds))
out = []
for line in src.split("\n"):
    m = re.match(r"^pub (struct|enum) (\w+)", line)
    if m and m.group(2).startswith(prefixes):
        out.append('#[cfg(feature = "kube")]')
    out.append(line)
sys.stdout.write("\n".join(out))
