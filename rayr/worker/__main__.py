from rayr.worker.executor import main

main()
