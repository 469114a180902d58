from gmt.standins.recipes import main

main()
