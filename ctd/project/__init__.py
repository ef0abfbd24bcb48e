"""Projects (tenants): every instance belongs to one; limits on what a project's instances use
together, what its tenants may do, and the name rule that keeps projects' names apart
(docs/remote.md, "Projects")."""
