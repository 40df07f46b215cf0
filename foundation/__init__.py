"""The ground floor: settings, errors, logging, metric definitions and topic-name rules. Imports
nothing of the project's."""
