from rayr.raylet.raylet import main

main()
