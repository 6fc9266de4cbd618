"""python -m monosemantic"""

from monosemantic.cli import main

main()
