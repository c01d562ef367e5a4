from fflab.cli import main

main()
