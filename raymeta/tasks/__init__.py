"""The task data layer: sources -> Arrow rows -> checked, tokenised features -> episodes."""

from .episodes import Episode, sample_episode
from .registry import catalog_names, task_config
from .sources import load_raw
from .task import PROCESSORS, Task, check_tasks, label_name, load_task

__all__ = ["Episode", "PROCESSORS", "Task", "catalog_names", "check_tasks", "label_name",
           "load_raw", "load_task", "sample_episode",
           "task_config"]
