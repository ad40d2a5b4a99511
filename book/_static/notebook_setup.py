# Set-up for a hosted Jupyter (Binder, Colab, a JupyterHub): make course_lib importable.
# In a clone set up with `make setup` the course is installed already and this does nothing.
import importlib.util
import pathlib
import subprocess
import sys

if importlib.util.find_spec("course_lib") is None:
    here = pathlib.Path.cwd().resolve()
    root = next((p for p in (here, *here.parents) if (p / "course_lib").is_dir()), None)
    if root is None:  # only this notebook was opened (Colab): fetch the course
        root = pathlib.Path.home() / "adam-course"
        if not root.exists():
            subprocess.run(["git", "clone", "--depth=1", "REPOSITORY_URL", str(root)], check=True)
    if importlib.util.find_spec("torch") is None:  # the CPU build, not a multi-GB CUDA one
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "torch",
             "--index-url", "https://download.pytorch.org/whl/cpu"],
            check=True,
        )  # fmt: skip
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", str(root)], check=True)
    sys.path.insert(0, str(root))
