from bloomtui.cli import run

run()
