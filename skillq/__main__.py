from skillq.cli import main

main()
