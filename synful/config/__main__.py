"""``python -m synful.config --templates configs --readme README.md``: regenerate the ini templates and the
README's key reference from the section dataclasses."""

import argparse

from .templates import update_readme, write_templates


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="regenerate configs/ templates and the README key reference")
    p.add_argument("--templates", help="directory to write the ini templates into (configs/)")
    p.add_argument("--readme", help="README.md whose config reference to regenerate")
    a = p.parse_args(argv)
    if a.templates:
        for w in write_templates(a.templates):
            print(f"wrote {w}")
    if a.readme:
        print(f"{a.readme}: {'updated' if update_readme(a.readme) else 'up to date'}")


if __name__ == "__main__":
    main()
