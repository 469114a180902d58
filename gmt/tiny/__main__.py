from gmt.tiny.build import main

main()
