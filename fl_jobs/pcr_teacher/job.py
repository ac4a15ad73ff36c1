"""Federated training of the pcr_teacher bundle in the NVFlare simulator (see fl_jobs/README.md).

python fl_jobs/pcr_teacher/job.py --data PREPARED --sites K --rounds R --local-epochs E --workspace WS [--gpu 0,1] [--export DIR]
"""

from fl_jobs.job import main

if __name__ == "__main__":
    raise SystemExit(main("pcr_teacher"))
