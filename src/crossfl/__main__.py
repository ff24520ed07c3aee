from crossfl.cli import main

main()
