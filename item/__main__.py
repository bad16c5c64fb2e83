from item.cli import main

main()
